"""Post-hoc saliency maps for any image classifier, from the libraries people use, behind one verb.

    from medimg_core.posthoc import attribute, explain
    maps = attribute(model, x, target=None, method="gradcam")      # np.ndarray (N, H, W) float32
    explanation = explain(model, x[:1], method="integrated_gradients", class_names=["benign", "malignant"])

`model` is any `nn.Module` taking images x (N, C, H, W) to logits (N, K) (medimg's `ImageClassifier`, a timm
model, an nn.Sequential CNN); `target` is an int, a sequence of N ints, or None for the predicted class (the
argmax of the logits; for a multi-label model, whose logits are one per label, the label with the highest logit).
The map explains the target's *logit* (pytorch-grad-cam's `ClassifierOutputTarget`, Captum's `target=`), not its
softmax probability.

Methods (`METHODS`, named as the libraries name them):

================================  ================================================  =====================================
method                            library class                                     reference
================================  ================================================  =====================================
``"gradcam"``                     pytorch_grad_cam.GradCAM                          Selvaraju et al., ICCV 2017, Sec. 3
``"gradcam++"``                   pytorch_grad_cam.GradCAMPlusPlus                  Chattopadhay et al., WACV 2018, Sec. 3
``"hirescam"``                    pytorch_grad_cam.HiResCAM                         Draelos & Carin, arXiv 2011.08891, 2020
``"layercam"``                    pytorch_grad_cam.LayerCAM                         Jiang et al., IEEE TIP 30, 2021, Sec. III
``"saliency"``                    captum.attr.Saliency                              Simonyan et al., ICLR workshop 2014, Sec. 3.1
``"integrated_gradients"``        captum.attr.IntegratedGradients                   Sundararajan et al., ICML 2017, Sec. 3
``"occlusion"``                   captum.attr.Occlusion                             Zeiler & Fergus, ECCV 2014, Sec. 4.2
================================  ================================================  =====================================

What each map is:

* **CAMs** (``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``): exactly what pytorch-grad-cam returns: the
  class activation map of `layer` after a ReLU, min-max scaled to [0, 1] *per image* by the library
  (`scale_cam_image`; a map that is 0 everywhere stays 0) and resized to the input's (H, W) with OpenCV's
  bilinear `cv2.resize`. Their absolute size says nothing: compare CAMs by rank or after thresholding.
  Option: ``layer``, the module whose activations are explained (an `nn.Module` or its dotted name in
  `model.named_modules()`); None takes `default_cam_layer(model)`: the last stage of a timm model's
  `feature_info` (``layer4`` of a ResNet, also inside medimg's `ImageClassifier` whose `backbone.model` is the
  timm model), else the last `nn.Conv2d`. A timm vision transformer's blocks give tokens (N, T, C): inside a timm
  model that has `num_prefix_tokens` (ViT, DeiT, EVA), a layer's tokens are laid back on the patch grid by
  `token_reshape` (prefix tokens dropped, grid of the input's aspect ratio) unless ``reshape_transform`` is given;
  a given ``reshape_transform`` (pytorch-grad-cam's `reshape_transforms.vit_reshape_transform`, or one that
  permutes a Swin's NHWC maps) is handed to the library unchanged.
* **pixel attributions** (``saliency``, ``integrated_gradients``): Captum's attribution per input value
  (N, C, H, W), reduced over channels by ``reduce``:
  ``"abs_sum"`` (the default) = sum over channels of |attribution|, the usual choice for IG maps in medical
  imaging; ``"sum"`` = the signed sum over channels, Captum's `visualize_image_attr` default (a signed map:
  positive raises the target logit); ``"abs_max"`` = max over channels of |attribution|, the reduction of
  Simonyan et al. (2014, Sec. 3.1) for their saliency map. Saliency is the raw input gradient (Captum's
  ``abs=False``; the reduction takes the absolute value, or not).
  Integrated Gradients (Captum's default Gauss-Legendre rule, ``n_steps=50``) starts from ``baseline``:
  ``"zeros"`` (the default) = an all-zero image *in the model's input space*, i.e. for inputs normalised with
  the dataset's (or ImageNet's) mean and std, the mean-intensity grey image; ``"blur"`` = the input blurred with
  a Gaussian of ``blur_sigma`` pixels (default 5.0; the blurred baseline of Sturmfels, Lundberg & Lee, Distill
  2020), so that only the image's fine structure is attributed; a number (a constant image) or a tensor
  (C, H, W) or (N, C, H, W). Completeness (Sundararajan et al., Sec. 3, Proposition 1): the attributions of one
  image sum to f(x) - f(baseline) for the target logit, up to the quadrature error of ``n_steps``; with the
  signed ``reduce="sum"`` the map keeps that property. ``internal_batch_size`` (default 64) bounds how many
  interpolated images go through the model at once (Captum's default, None, sends all N x n_steps).
* **occlusion**: Captum's Occlusion with a square window sliding over H and W and spanning all channels,
  replaced by ``baseline`` (default 0.0, the mean in normalised input space): each pixel's value is the mean,
  over the windows that cover it, of f(x) - f(x with the window replaced), for the target logit. The window
  spans every channel, so the map is that value (signed: positive where hiding the patch lowers the target
  logit); ``reduce`` does not apply. Options ``window`` (default max(2, round(min(H, W) / 8)): 8 px at 64 px,
  28 px at 224 px) and ``stride`` (default max(1, window // 2)); these defaults tile a side divisible by 8 exactly.
  Pixels that no window covers (when (side - window) is not a multiple of stride) are 0, as Captum leaves them.
  Cost: one forward pass per window position (225 at the defaults).

Every call puts the model in eval mode and restores its training flag afterwards, and leaves every parameter's
`.grad` as it found it (pytorch-grad-cam calls `model.zero_grad()` and `loss.backward()` on the model; Captum
uses `torch.autograd.grad`); it runs on the model's device (CPU included). All seven methods are deterministic
for a fixed input and fixed weights on a CPU (no sampling: IG's quadrature is fixed, the CAMs' test-time
augmentation and eigen-smoothing of pytorch-grad-cam are not used); on a GPU some backward kernels (pooling,
upsampling) accumulate atomically, so gradient maps may differ in the last digits unless
`torch.use_deterministic_algorithms(True)`.

captum and grad-cam are an optional extra (``pip install 'medimg-core[posthoc]'``) imported inside the functions
that use them: importing medimg_core does not import them, and a missing one is an ImportError giving that
command. The library code is used as is; what is written here is the glue (target layer, targets, channel
reduction, model state), which neither library provides for a classifier of unknown architecture.

The code: `medimg_core.posthoc.methods` (the registry `METHODS`, the CAM layer, `attribute`) and
`medimg_core.posthoc.explanation` (`explain`, `SaliencyExplanation`); both are re-exported here.

`explain` wraps one image's map in a `SaliencyExplanation` (medimg_core.explain's protocol: to_text, figure,
to_dict, target, predicted), whose figure overlays the map on the image with `medimg_core.figures.heatmap_overlay`.
"""

from medimg_core.posthoc.explanation import SaliencyExplanation, explain
from medimg_core.posthoc.methods import (
    INSTALL_HINT,
    METHODS,
    REDUCTIONS,
    Method,
    attribute,
    default_cam_layer,
    occlusion_defaults,
    token_reshape,
)

__all__ = [
    "INSTALL_HINT",
    "METHODS",
    "REDUCTIONS",
    "Method",
    "SaliencyExplanation",
    "attribute",
    "default_cam_layer",
    "explain",
    "occlusion_defaults",
    "token_reshape",
]
