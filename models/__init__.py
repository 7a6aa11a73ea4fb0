"""Networks and what a trained network needs to make colour.

    models.registry    the architecture registry (no torch: tasks.py reads it)
    models.fcn         FCN-32s / 16s / 8s on a VGG16-BN trunk
    models.colorizer   Colorizer: a network + its mean lightness, cluster colours, decoders
    models.decoders    posteriors -> a/b (max / mean / annealed)
    models.device      the one device resolver

This package itself imports no torch; import the submodules you need.
"""
