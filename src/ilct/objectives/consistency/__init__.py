"""The consistency-training core: schedules, parameterization, losses, coupling.

Every function here is pure (tensors and settings in, tensors out) so that each
formula of METHOD.md can be tested against golden values.
"""
