"""The NumPy backend: every op of the contract (forge/runtime/backend.py), vectorised, float32.

One file per op family, mirroring forge/kernels/ with the same op signatures; `NumpyBackend`
(backend.py) binds them to the Backend protocol.
"""
from forge.cpu.backend import NumpyBackend

__all__ = ["NumpyBackend"]
