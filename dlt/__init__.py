"""dlt: the executable companion to *The Principles of Deep Learning Theory* (Roberts & Yaida).

Importing ``dlt`` switches JAX to float64 (``jax_enable_x64``): every theory computation in the
library is done in double precision, and the empirical NTK by autodiff must match it to ~1e-12.
This is the library's only global setting; it is made once, here, on purpose.
"""
import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
