"""Nothing in the documentation can rot: every Python snippet of the README, the documentation's pages and the
public docstrings runs; every public name documents its arguments, what it returns and an example; every command
line the pages show names a script and options that exist (train.py's compose with Hydra); the generated blocks
are the committed results; and the site builds with `mkdocs build --strict` without a warning."""

import inspect
import os
import re
import shlex
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import hyperopt
from tests.conftest import ROOT
from tests.harness import compose_experiment  # noqa: F401 (registers Table 1's experiments)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w+)[^\n]*\n(.*?)^\1```", re.M | re.S)


def blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(body) for _, lang, body in FENCE.findall(text) if lang == language]


def snippet_namespace() -> dict:
    """What a snippet may assume, as the documentation's home page says: torch, hyperopt, a model, a few batches
    of (x, y) and a loss_fn."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    batches = [(torch.randn(8, 20), torch.randint(4, (8,))) for _ in range(3)]
    return {"torch": torch, "hyperopt": hyperopt, "model": model, "batches": batches,
            "loss_fn": torch.nn.functional.cross_entropy}


def run_snippets(snippets: list[str], where: str) -> None:
    namespace = snippet_namespace()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available", category=UserWarning)  # GradScaler's
        for number, code in enumerate(snippets, 1):
            try:
                exec(compile(code, f"{where}, snippet {number}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{where}: snippet {number} fails: {error!r}\n{code}") from error


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_snippet_of_a_page_runs(page):
    run_snippets(blocks(page.read_text(), "python"), page.name)  # in order, sharing names, as a reader runs them


def public_members() -> dict:
    """Every name `import hyperopt` gives, and the methods the API reference shows."""
    names = {name: getattr(hyperopt, name) for name in hyperopt.__all__ if name != "GRAMMAR"}
    listed = re.search(r"members: \[(.*?)\]", (ROOT / "docs" / "api.md").read_text())[1]
    names.update({f"Hyperoptimizer.{name}": getattr(hyperopt.Hyperoptimizer, name.strip())
                  for name in listed.split(",")})
    return names


def documentation(thing) -> str:
    doc = inspect.getdoc(thing) or ""
    if inspect.isclass(thing) and "__init__" in vars(thing):
        doc += "\n" + (inspect.getdoc(thing.__init__) or "")
    return doc


@pytest.mark.parametrize("name, thing", public_members().items(), ids=list(public_members()))
def test_every_public_name_documents_its_arguments_returns_and_an_example_that_runs(name, thing):
    doc = documentation(thing)
    function = thing.__init__ if inspect.isclass(thing) else thing
    arguments = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
    examples = blocks(doc, "python")
    assert examples or issubclass(thing, Warning) if inspect.isclass(thing) else examples, \
        f"{name} has no example"
    if arguments and not (inspect.isclass(thing) and issubclass(thing, Exception)):
        assert "Args:" in doc, f"{name} does not document its arguments"
        for argument in arguments:
            assert re.search(rf"^\s+\*{{0,2}}{argument}\b.*:", doc, re.M), f"{name}: {argument} is not documented"
    if not inspect.isclass(thing) and inspect.signature(thing).return_annotation not in ("None", None):
        assert "Returns:" in doc, f"{name} does not say what it returns"
    run_snippets(examples, name)


def test_the_grammar_is_documented():
    assert "The grammar of the paper's notation" in (ROOT / "hyperopt" / "notation.py").read_text()


def commands(text: str) -> list[list[str]]:
    """The command lines of a page's bash blocks, continuations joined, variables set in the block expanded."""
    found = []
    for block in blocks(text, "bash"):
        variables = {}
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 1 and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
                key, value = words[0].split("=", 1)
                variables[key] = value
                continue
            for part in " ".join(shlex.quote(w) for w in words).split(" && "):
                command = [re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), w) for w in shlex.split(part)]
                if command:
                    found.append(command)
    return found


def shown_commands() -> list[tuple[str, list[str]]]:
    return [(page.name, command) for page in PAGES for command in commands(page.read_text())]


def train_overrides(command: list[str]) -> list[str] | None:
    """The overrides of a train.py command (under python, .venv's python or torchrun), or None for another."""
    for index, word in enumerate(command):
        if word.endswith("experiments/train.py"):
            return [w for w in command[index + 1:] if w != "-m"]
    return None


def one_job(overrides: list[str], experiments: list[str]) -> list[str]:
    """A multirun's first job: a sweep's first value, a glob's first match."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    chosen = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            chosen.append(f"{key}={override.get_value_element_as_str()}")
        elif isinstance(override.value(), Glob):
            chosen.append(f"{key}={override.value().filter(experiments)[0]}")
        else:
            chosen.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
    return chosen


def test_every_train_command_the_pages_show_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from omegaconf import OmegaConf

    from experiments.config import validate
    shown = [(page, overrides) for page, command in shown_commands()
             if (overrides := train_overrides(command)) is not None]
    assert len(shown) >= 20
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        experiments = GlobalHydra.instance().config_loader().get_group_options("exp")
        for page, overrides in shown:
            try:
                config = compose("config", overrides=one_job(overrides, experiments), return_hydra_config=True)
                run = {k: v for k, v in OmegaConf.to_container(config).items() if k != "hydra"}  # (composed only
                validate(OmegaConf.to_container(OmegaConf.create(run), resolve=True))       # for the launcher)
            except Exception as error:
                raise AssertionError(f"{page}: train.py {' '.join(overrides)}: {error}") from error


@pytest.mark.slow  # each script's --help imports torch: some 20 s
def test_every_script_and_option_the_pages_show_exists():
    shown = {}
    for page, command in shown_commands():
        script = next((word for word in command if word.startswith("scripts/")), None)
        if script is not None and train_overrides(command) is None:
            assert (ROOT / script).exists(), f"{page}: {script} does not exist"
            shown.setdefault(script, []).append((page, [w.split("=", 1)[0] for w in command if w.startswith("--")]))
    python_scripts = sorted(script for script in shown if script.endswith(".py"))
    assert len(python_scripts) >= 8
    def help_of(script: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    with ThreadPoolExecutor(2) as pool:
        helps = dict(zip(python_scripts, pool.map(help_of, python_scripts)))
    for script, result in helps.items():
        assert result.returncode == 0, f"{script} --help: {result.stderr}"
        for page, options in shown[script]:
            for option in options:
                assert re.search(rf"{re.escape(option)}\b", result.stdout), f"{page}: {script} has no option {option}"


def test_every_generated_block_is_the_committed_result():
    for page in PAGES:
        text = page.read_text()
        for name in re.findall(r"<!-- (\w+):begin -->", text):
            block = text.split(f"<!-- {name}:begin -->\n", 1)[1].split(f"<!-- {name}:end", 1)[0]
            committed = (ROOT / "results" / f"{name}.md").read_text()
            body = committed.split("\n", 2)[2] if name == "table1" else committed  # the page has its own title
            assert block.strip() == body.strip(), f"{page.name}: the {name} block differs from results/{name}.md"


def test_the_site_builds_without_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in output, output
    assert (tmp_path / "api" / "index.html").read_text().count("Args") or "Parameters" in output


def test_the_table_of_optimizers_is_the_constructors():
    from hyperopt.notation import OPTIMIZERS
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| (.*?) \| (.*?) \|$", (ROOT / "docs" / "library.md").read_text(), re.M)
    assert [name for name, *_ in rows] == [cls.NAME for cls in OPTIMIZERS.values()]
    for name, defaults, by_default, learnable in rows:
        cls = getattr(hyperopt, name)
        assert defaults == ", ".join(f"{k}={d!r}" for k, (d, _, _) in cls.HYPERPARAMETERS.items()), name
        assert learnable == ", ".join(k for k, (_, _, can) in cls.HYPERPARAMETERS.items() if can), name
        values = {k: d for k, (d, _, _) in cls.HYPERPARAMETERS.items()}
        assert by_default.split(";")[0] == ", ".join(cls.default_learn(values)), name
    assert hyperopt.SGD.default_learn({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}) == ("lr", "momentum")
