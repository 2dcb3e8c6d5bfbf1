"""Training: the loop, the jitted steps, the loss, the optimiser, evaluation of a model,
restored trained models, and where a run's scalars go."""
