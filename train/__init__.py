"""FCN colorizer training on precomputed shards.

    train.data        ShardDataset, EpochSampler, make_loader
    train.loss        kl_loss
    train.fit         fit, train_one_epoch, evaluate, validate, TrainState
    train.best        which validation best.pt keeps (cfg best_by)
    train.metrics     confusion matrix scores
    train.checkpoint  weights-only checkpoints;  train.rng  every RNG state
    train.runlog      config.json, log.csv;  train.visual  tiles and curves
    train.ddp         process-group helpers;  train.distributed  the torchrun entry point

This package itself imports no torch (the Luigi scheduler process may import it).
"""
