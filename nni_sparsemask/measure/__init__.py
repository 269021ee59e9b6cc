"""What a network scores and costs: segmentation / saliency / edge metrics, parameter counts, FPS, and the
machine-independent cost of a forward pass (operator calls, FLOPs, bytes), measured in the deployment form.

* :mod:`.metrics` -- mIoU / PixAcc, saliency F-beta / MAE, edge ODS / OIS / AP, parameter split, FPS;
* :mod:`.deploy` -- the deployment form (BN folded, channels_last) that speed is measured in;
* :mod:`.cost` -- operator calls, FLOPs and bytes written per forward.
"""
