"""What a technique or setting does to the model: the ablation, the objectives, the studies of the demo."""
