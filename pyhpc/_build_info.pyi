# Stub for the module CMake generates from pyhpc/_build_info.py.in.
MPI_C_COMPILER: str
MPI_C_VERSION: str
MPI_C_LIBRARIES: str
CUDA_ENABLED: bool
CUDA_ARCHITECTURES: str
CUDA_COMPILER_VERSION: str
CXX_COMPILER: str
BUILD_TYPE: str
