"""The Spack recipe (spack/spack_repo/pyhpc/packages/py_pyhpc/package.py) agrees
with pyproject.toml: the same dependencies with the same lower bounds.

Pure Python, no Spack: package.py is read with `ast`, pyproject.toml with tomllib
(tomli before Python 3.11). A bound changed in one file only fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACK_REPO = ROOT / "spack" / "spack_repo" / "pyhpc"
RECIPE = SPACK_REPO / "packages" / "py_pyhpc" / "package.py"
PYPROJECT = ROOT / "pyproject.toml"

# Build requirements that Spack's PythonPackage brings itself, not pyproject.toml.
SPACK_BUILD_TOOLS = {"py-pip", "py-wheel"}

pytestmark = pytest.mark.skipif(
    not (RECIPE.is_file() and PYPROJECT.is_file()),
    reason="the Spack recipe or pyproject.toml is not beside the tests (installed test run)")


def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli before 3.11")
    return tomllib


# ---- the two sides, each reduced to {name: (lower bound, kinds, when)} ---------------------

def spack_name(pypi_name: str) -> str:
    """PyPI name -> Spack package name (PEP 503 normalised, py- prefix)."""
    return "py-" + re.sub(r"[-_.]+", "-", pypi_name).lower()


def pep508_lower_bound(requirement: str) -> tuple[str, str | None]:
    """'scikit-build-core>=0.10' -> ('scikit-build-core', '0.10'); no bound -> None.
    Only `>=` is understood: anything else must be taught to this test (and to the recipe)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?", requirement)
    assert m, f"cannot read requirement {requirement!r}"
    name, spec = m.group(1), m.group(2)
    if not spec:
        return name, None
    b = re.fullmatch(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
    assert b, (f"{requirement!r}: only '>=X' bounds are mirrored in the Spack recipe; "
               f"add the matching constraint to package.py and teach this test")
    return name, b.group(1)


def spack_lower_bound(spec: str) -> tuple[str, str | None]:
    """'py-cython@3.0:' -> ('py-cython', '3.0'); 'mpi' -> ('mpi', None)."""
    name, _, version = spec.partition("@")
    name = name.split()[0].split("+")[0].split("~")[0]
    if not version:
        return name, None
    version = version.split()[0].split("+")[0].split("~")[0]
    assert re.fullmatch(r"[0-9][0-9A-Za-z.]*:", version), (
        f"depends_on({spec!r}): only 'X:' lower bounds are compared with pyproject.toml")
    return name, version[:-1]


def recipe_dependencies(source: str) -> dict[str, dict]:
    """depends_on(...) calls of package.py: {name: {"bound", "types", "when"}}."""
    deps: dict[str, dict] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "depends_on"):
            continue
        spec = ast.literal_eval(node.args[0])
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        types = kwargs.get("type", ("build", "link"))  # Spack's default
        types = (types,) if isinstance(types, str) else tuple(types)
        name, bound = spack_lower_bound(spec)
        assert name not in deps, f"package.py: depends_on({name!r}) appears twice; keep one"
        deps[name] = {"bound": bound, "types": set(types), "when": kwargs.get("when")}
    return deps


def recipe_variants(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "variant"):
            names.add(ast.literal_eval(node.args[0]))
    return names


def mismatches(pyproject: dict, source: str) -> list[str]:
    """Every way package.py and pyproject.toml disagree (empty when they agree)."""
    deps = recipe_dependencies(source)
    variants = recipe_variants(source)
    problems: list[str] = []

    def expect(name: str, bound: str | None, kind: str, when: str | None, origin: str) -> None:
        dep = deps.get(name)
        if dep is None:
            problems.append(f"{origin}: package.py has no depends_on({name!r})")
            return
        if dep["bound"] != bound:
            want = f"{name}@{bound}:" if bound else name
            problems.append(f"{origin}: package.py says {name}@{dep['bound']}: "
                            f"but pyproject.toml's bound is {want!r}")
        if kind not in dep["types"]:
            problems.append(f"{origin}: depends_on({name!r}) needs type {kind!r}, has {sorted(dep['types'])}")
        if dep["when"] != when:
            problems.append(f"{origin}: depends_on({name!r}) has when={dep['when']!r}, expected {when!r}")

    # build-system.requires -> build dependencies
    build_names = set()
    for req in pyproject["build-system"]["requires"]:
        name, bound = pep508_lower_bound(req)
        build_names.add(spack_name(name))
        expect(spack_name(name), bound, "build", None, f"build-system.requires {req!r}")

    # project.dependencies -> run dependencies
    run_names = set()
    for req in pyproject["project"]["dependencies"]:
        name, bound = pep508_lower_bound(req)
        run_names.add(spack_name(name))
        expect(spack_name(name), bound, "run", None, f"project.dependencies {req!r}")

    # extras that the recipe offers as variants -> run dependencies when=+extra
    extras = pyproject["project"].get("optional-dependencies", {})
    for extra in sorted(variants & set(extras)):
        for req in extras[extra]:
            name, bound = pep508_lower_bound(req)
            run_names.add(spack_name(name))
            expect(spack_name(name), bound, "run", f"+{extra}", f"optional-dependencies.{extra} {req!r}")

    # requires-python and [tool.scikit-build] cmake.version
    rp = pyproject["project"]["requires-python"]
    m = re.fullmatch(r">=\s*([0-9.]+)", rp)
    assert m, f"requires-python {rp!r}: only '>=X' is mirrored in package.py"
    expect("python", m.group(1), "run", None, f"requires-python {rp!r}")
    cv = pyproject["tool"]["scikit-build"]["cmake"]["version"]  # TOML: cmake.version = ...
    m = re.fullmatch(r">=\s*([0-9.]+)", cv)
    assert m, f"[tool.scikit-build] cmake.version {cv!r}: only '>=X' is mirrored in package.py"
    expect("cmake", m.group(1), "build", None, f"[tool.scikit-build] cmake.version {cv!r}")

    # ... and nothing Python-side in the recipe that pyproject.toml does not ask for
    for name, dep in sorted(deps.items()):
        if not name.startswith("py-") or name in SPACK_BUILD_TOOLS:
            continue
        if "build" in dep["types"] and name not in build_names:
            problems.append(f"package.py: {name} is a build dependency but not in build-system.requires")
        if "run" in dep["types"] and name not in run_names:
            problems.append(f"package.py: {name} is a run dependency but not in project.dependencies "
                            f"(or an extra the recipe has as a variant)")
    return problems


# ---- the tests -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pyproject() -> dict:
    return _toml().loads(PYPROJECT.read_text())


@pytest.fixture(scope="module")
def source() -> str:
    return RECIPE.read_text()


def test_recipe_agrees_with_pyproject(pyproject, source):
    problems = mismatches(pyproject, source)
    assert not problems, "spack/…/py_pyhpc/package.py and pyproject.toml disagree:\n  " + "\n  ".join(problems)


def test_recipe_has_the_build_switches_and_mpi(source):
    deps = recipe_dependencies(source)
    assert "mpi" in deps, "the recipe must depend on the virtual `mpi` (MPICH, Open MPI, ...)"
    assert "class PyPyhpc(PythonPackage, CudaPackage)" in source
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for define in ("MPI_C_COMPILER", "PYHPC_ENABLE_CUDA", "CMAKE_CUDA_ARCHITECTURES"):
        assert f'"cmake.define.{define}"' in source, f"config_settings must pass cmake.define.{define}"
        assert define in cmake, f"CMakeLists.txt no longer reads {define}"
    # The interposer path the recipe exports is where the wheel installs it.
    interpose = (ROOT / "pyhpc" / "interpose.py").read_text()
    assert '"lib" / LIBRARY_NAME' in interpose and 'LIBRARY_NAME = "libpyhpc_interpose.so"' in interpose
    assert '"pyhpc", "lib", "libpyhpc_interpose.so"' in source
    readme = (ROOT / "spack" / "README.md").read_text()
    assert "PY_PYHPC_INTERPOSE" in source and "PY_PYHPC_INTERPOSE" in readme


def test_repo_yaml():
    text = (SPACK_REPO / "repo.yaml").read_text()
    assert re.search(r"^\s+namespace:\s*['\"]?pyhpc['\"]?\s*$", text, re.M), text
    assert re.search(r"^\s+api:\s*v2\.\d+\s*$", text, re.M), text


@pytest.mark.parametrize("where", ["pyproject", "recipe"])
def test_a_bound_bumped_in_one_place_only_is_caught(pyproject, source, where):
    """The check above is not vacuous: move one bound on one side and it fails."""
    import copy

    if where == "pyproject":
        bumped = copy.deepcopy(pyproject)
        reqs = bumped["build-system"]["requires"]
        i = next(i for i, r in enumerate(reqs) if r.startswith("pybind11"))
        reqs[i] = "pybind11>=99.0"
        assert any("py-pybind11" in p for p in mismatches(bumped, source))
    else:
        bumped_source, n = re.subn(r'"py-numpy@[0-9.]+:"', '"py-numpy@99.0:"', source)
        assert n == 1
        assert any("py-numpy" in p for p in mismatches(pyproject, bumped_source))
