"""Sharing a trained model: `ilct export` (export.py, with its model card, card.py), the Python API `ilct.load`
(model.py) and the diffusers pipeline (pipeline.py, optional: `pip install "ilct[diffusers]"`)."""
