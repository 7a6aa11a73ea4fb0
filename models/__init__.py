from .vgg import VGGTrunk
from .fcn import FCN, build_model, model_settings, init_from_fcn, load_vgg16_bn_weights

__all__ = ["VGGTrunk", "FCN", "build_model", "model_settings", "init_from_fcn", "load_vgg16_bn_weights"]
