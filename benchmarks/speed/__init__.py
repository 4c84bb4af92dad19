"""Speed: throughput, the optimizer update, memory traffic, CPU sharing, subnormal floats."""
