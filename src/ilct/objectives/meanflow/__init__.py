"""Flow-map objectives beside consistency training (METHOD.md section 7).

A flow map sends a point of the path at time t to the point at an earlier time r.
MeanFlow learns it through the average velocity u(z_t, r, t): z_r = z_t - (t - r) u.
Everything here is a pure function of tensors and settings, tested against golden
values; the training loop plugs it in through its objective registry.
"""
