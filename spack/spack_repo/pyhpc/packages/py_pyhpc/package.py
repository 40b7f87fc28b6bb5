# Spack recipe for pyhpc, in the pyhpc package repository (spack/spack_repo/pyhpc).
#
#   spack repo add --scope user /path/to/pyhpc/spack/spack_repo/pyhpc
#   spack install py-pyhpc                      # or py-pyhpc +cuda cuda_arch=90, py-pyhpc +moe
#
# The lower bounds below are those of pyproject.toml (build-system.requires,
# project.dependencies, requires-python, [tool.scikit-build] cmake.version);
# tests/test_spack_recipe.py fails when the two disagree. See spack/README.md.

import os

from spack_repo.builtin.build_systems.cuda import CudaPackage
from spack_repo.builtin.build_systems.python import PythonPackage

from spack.package import *

#: The checkout this recipe lives in (spack/spack_repo/pyhpc/packages/py_pyhpc/ is
#: five folders below its root): `develop` is fetched from its git history, offline.
_CHECKOUT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 5))

#: The stand-alone test: two ranks import pyhpc, pack a strided MPI type with
#: pyhpc's datatype engine and reduce over MPI_COMM_WORLD.
_SMOKE = """
import numpy as np
import pyhpc
import pyhpc.datatype as dt
import pyhpc.interpose
from mpi4py import MPI

comm = MPI.COMM_WORLD
assert comm.Get_size() == 2, comm.Get_size()
vec = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
buf = np.arange(8.0) + comm.Get_rank()
packed = np.frombuffer(dt.pack(buf, vec), dtype=np.float64)
assert np.array_equal(packed, buf[::2]), packed
total = comm.allreduce(float(packed.sum()))
assert total == 28.0, total
vec.Free()
if comm.Get_rank() == 0:
    print("pyhpc", pyhpc.__version__, "2-rank smoke ok:",
          MPI.Get_library_version().splitlines()[0].strip())
    print("interposer", pyhpc.interpose.library_path())
"""


class PyPyhpc(PythonPackage, CudaPackage):
    """MPI/HPC middleware for Python: an MPI datatype engine and LD_PRELOAD
    interposer, fault-tolerant collectives, sequence-parallel attention,
    GEMM/collective overlap and an affinity-aware MoE all-to-all. C++17 and
    CUDA cores behind pybind11 and Cython, built with scikit-build-core and CMake
    against the MPI that mpi4py uses."""

    git = "file://" + _CHECKOUT

    license("BSD-3-Clause")

    # The checkout's `main` branch, cloned from the local repository (no network).
    # For uncommitted work use `spack develop` / `spack dev-build` (spack/README.md).
    version("develop", branch="main")

    variant(
        "moe",
        default=False,
        description="Add scipy for pyhpc.moe's placement solvers (pip's pyhpc[moe] extra)",
    )

    # ---- build: pyproject.toml's build-system.requires, [tool.scikit-build] ----
    depends_on("c", type="build")
    depends_on("cxx", type="build")
    depends_on("cmake@3.24:", type="build")
    depends_on("ninja", type="build")
    # -C/--config-settings with several keys needs pip 23.1 (Makefile, Spack's builder).
    depends_on("py-pip@23.1:", type="build")
    depends_on("py-scikit-build-core@0.10:", type="build")
    depends_on("py-pybind11@2.12:", type="build")
    depends_on("py-cython@3.0:", type="build")
    # mpi4py: its Cython declarations and C headers at build time, the MPI bindings at run time.
    depends_on("py-mpi4py@4.0:", type=("build", "run"))

    # ---- run: pyproject.toml's requires-python and project.dependencies ----
    depends_on("python@3.9:", type=("build", "link", "run"))
    depends_on("py-numpy@1.22:", type="run")
    # [project.optional-dependencies] moe
    depends_on("py-scipy@1.9:", type="run", when="+moe")

    # Any MPI with an mpicc: MPICH and Open MPI are both tested. mpi4py depends on
    # `mpi` too, so both are built against one provider.
    depends_on("mpi")

    # C++17 in .cu files: CUDA 11 or newer.
    depends_on("cuda@11:", when="+cuda")
    conflicts("cuda_arch=none", when="+cuda", msg="+cuda needs cuda_arch=<sm>, e.g. cuda_arch=90")

    @property
    def import_modules(self):
        modules = [
            "pyhpc",
            "pyhpc._core",
            "pyhpc._mpi",
            "pyhpc._ccl",
            "pyhpc.ccl",
            "pyhpc.datatype",
            "pyhpc.interpose",
            "pyhpc.moe",
            "pyhpc.attention",
            "pyhpc.overlap",
            "pyhpc.launcher",
            "pyhpc.cli",
            "pyhpc.settings",
            "pyhpc.system_model",
            "pyhpc.cuda",
        ]
        if self.spec.satisfies("+cuda"):
            modules.append("pyhpc._cuda")
        return modules

    def config_settings(self, spec, prefix):
        # Passed to scikit-build-core as -C key=value; the same switches `make`/pip use.
        settings = {
            "cmake.define.MPI_C_COMPILER": spec["mpi"].mpicc,
            "cmake.define.PYHPC_ENABLE_CUDA": "ON" if spec.satisfies("+cuda") else "OFF",
            "build.verbose": "true",
        }
        if spec.satisfies("+cuda"):
            cuda = spec["cuda"]
            settings["cmake.define.CMAKE_CUDA_COMPILER"] = join_path(cuda.prefix.bin, "nvcc")
            settings["cmake.define.CUDAToolkit_ROOT"] = cuda.prefix
            settings["cmake.define.CMAKE_CUDA_ARCHITECTURES"] = ";".join(
                spec.variants["cuda_arch"].value
            )
        return settings

    def interposer_path(self):
        """Where the wheel puts libpyhpc_interpose.so: site-packages/pyhpc/lib."""
        platlib = self.spec["python"].package.platlib
        return join_path(self.prefix, platlib, "pyhpc", "lib", "libpyhpc_interpose.so")

    def setup_run_environment(self, env):
        # `spack load py-pyhpc` exports the interposer's path, for
        #   mpirun -x LD_PRELOAD=$PY_PYHPC_INTERPOSE ...      (Open MPI)
        #   mpiexec -genv LD_PRELOAD $PY_PYHPC_INTERPOSE ...  (MPICH)
        # It is not a PYHPC_* setting: pyhpc itself never reads it.
        env.set("PY_PYHPC_INTERPOSE", self.interposer_path())

    def test_interposer_installed(self):
        """check that libpyhpc_interpose.so is where PY_PYHPC_INTERPOSE points"""
        path = self.interposer_path()
        assert os.path.isfile(path), f"{path} is missing"

    def test_two_rank_smoke(self):
        """run pyhpc on 2 MPI ranks: import, pack a strided type, allreduce"""
        mpi = self.spec["mpi"]
        mpiexec = Executable(join_path(mpi.prefix.bin, "mpiexec"))
        args = ["-n", "2"]
        extra_env = {}
        if mpi.satisfies("openmpi"):
            args.append("--oversubscribe")
            if os.geteuid() == 0:
                extra_env.update(
                    OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"
                )
        python = self.spec["python"].command.path
        out = mpiexec(*args, python, "-c", _SMOKE, output=str, error=str, extra_env=extra_env)
        print(out)
        assert "2-rank smoke ok" in out, out
