"""A small mutation-testing pass over spix's plain modules (issue 18, item 6). Not collected by pytest, not in CI.

Each mutant is one small edit of one module (an operator swapped, a constant off by one, True/False, a
statement removed, two arguments swapped, a [::-1] dropped), applied to a COPY of the repository; the
module's relevant test files then run with `-x` and a time limit. A failing or timed-out run kills the
mutant; a green run means it survived. The mutants are made from the module's syntax tree, sampled with
a fixed seed, and written to a JSON file with their exact source edits, so a second pass (after new
tests) re-runs the very same mutants.

The copy must not be the checkout itself (refused when it holds .git), and must be importable as `spix`
by the given interpreter (see `--help`). Typical use, from a copy at /tmp/mut with /tmp/mutvenv's
interpreter importing spix from it:

    cd /tmp/mut && nice -n 19 /tmp/mutvenv/bin/python tests/mutation.py run \
        --root /tmp/mut --python /tmp/mutvenv/bin/python --out /tmp/mutation/before.json
    # later, the same mutants (all, or only the survivors of a previous pass) against newer tests:
    nice -n 19 /tmp/mutvenv/bin/python tests/mutation.py run --root /tmp/mut --python /tmp/mutvenv/bin/python \
        --replay /tmp/mutation/before.json --only-survivors --out /tmp/mutation/after.json
    /tmp/mutvenv/bin/python tests/mutation.py report /tmp/mutation/before.json [/tmp/mutation/after.json]
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FAST = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
PREPROCESS_FAST = "not untidy and not nothing_succeeded and not resume_after_kill and not help_of_every"
STEP_TESTS = "step_gives or step_needs"
EVAL_FAST = "perfect_features or streamed_sums or every_feature_set"

# module -> pytest invocations (each a list of arguments), the fastest and most specific first.
TARGETS: dict[str, list[list[str]]] = {
    "pipeline/superpixels.py": [
        ["tests/test_metrics.py", "tests/test_preprocess.py", "-k", PREPROCESS_FAST],
        ["tests/test_data.py", "-k", "not crop_tasks"],
    ],
    "pipeline/shards.py": [
        ["tests/test_shard_readers.py", "tests/test_preprocess_resume.py"],
        ["tests/test_preprocess.py", "-k", "statistics_match or shards_are_plain"],
        ["tests/test_data.py"],
    ],
    "trainer/data.py": [["tests/test_data.py"]],
    "trainer/plan.py": [["tests/test_plan.py"], ["tests/test_data.py", "-k", "crop_tasks or rebatch"]],
    "trainer/metrics.py": [["tests/test_metrics.py"], ["tests/test_evaluate.py", "-k", EVAL_FAST]],
    "trainer/losses.py": [["tests/test_losses.py"]],
    "trainer/embedding.py": [["tests/test_pictures.py"], ["tests/test_evaluate.py", "-k", EVAL_FAST], ["tests/test_infer.py", "-k", STEP_TESTS]],
    "inference/pictures.py": [["tests/test_pictures.py"], ["tests/test_infer.py", "-k", STEP_TESTS]],
    "inference/filters.py": [["tests/test_pictures.py"], ["tests/test_infer.py", "-k", STEP_TESTS]],
    "inference/kmeans.py": [["tests/test_pictures.py"]],
    "inference/basis.py": [["tests/test_pictures.py"], ["tests/test_infer.py", "-k", STEP_TESTS]],
}

BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
               ast.MatMult: ast.Mult}
COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
AUG_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.BitOr: ast.BitAnd,
             ast.BitAnd: ast.BitOr}


@dataclass
class Mutant:
    id: str  # module:index
    module: str
    line: int
    kind: str
    original: str  # the source text replaced
    replacement: str
    start: tuple[int, int]  # (line, col) 1-based line, 0-based col (ast positions, in characters)
    end: tuple[int, int]
    status: str = "pending"  # killed | survived | timeout | error
    seconds: float = 0.0
    failed: str = ""  # first failing test, when killed


# ----------------------------------------------------------------------------- finding mutants


def offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def segment(source: str, starts: list[int], node: ast.AST) -> tuple[int, int]:
    return starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset


class Finder(ast.NodeVisitor):
    """Collects (node, kind, replacement source) candidates; annotations, docstrings and raise messages skipped."""

    def __init__(self, source: str):
        self.source = source
        self.found: list[tuple[ast.AST, str, str]] = []
        self.assigned: list[set[str]] = [set()]

    def add(self, node: ast.AST, kind: str, new: ast.AST | str) -> None:
        text = new if isinstance(new, str) else ast.unparse(new)
        if text != ast.get_source_segment(self.source, node):
            self.found.append((node, kind, text))

    # scopes and skipped parts
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        self.assigned.append({a.arg for a in node.args.args + node.args.kwonlyargs})
        self.body(node.body)
        self.assigned.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.body(node.body)

    def body(self, statements: list[ast.stmt]) -> None:
        for index, statement in enumerate(statements):
            if index == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # docstring
            self.visit(statement)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_Raise(self, node: ast.Raise) -> None:
        pass  # error messages: not behaviour worth mutating

    def visit_Import(self, node: ast.AST) -> None:
        pass

    visit_ImportFrom = visit_Import

    def visit_JoinedStr(self, node: ast.AST) -> None:
        pass

    # statements
    def visit_Assign(self, node: ast.Assign) -> None:
        names = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if names and names <= self.assigned[-1] and len(self.assigned) > 1:
            self.add(node, "remove statement", "pass")  # a re-assignment: the code still runs without it
        self.assigned[-1] |= names
        self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.add(node, "remove statement", "pass")
        swap = AUG_SWAPS.get(type(node.op))
        if swap:
            new = copy.deepcopy(node)
            new.op = swap()
            self.add(node, "augmented operator", new)
        self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Call):
            self.add(node, "remove call", "pass")
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        new = copy.deepcopy(node.test)
        self.add(node.test, "negate condition", ast.UnaryOp(ast.Not(), new))
        self.visit(node.test)
        self.body(node.body)
        self.body(node.orelse)

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None:
            self.visit(node.value)

    # expressions
    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = BINOP_SWAPS.get(type(node.op))
        if swap:
            new = copy.deepcopy(node)
            new.op = swap()
            self.add(node, "operator", new)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for index, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap:
                new = copy.deepcopy(node)
                new.ops[index] = swap()
                self.add(node, "comparison", new)
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.add(node, "and/or", new)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, (ast.Not, ast.Invert, ast.USub)) and not isinstance(node.operand, ast.Constant):
            self.add(node, "drop unary", copy.deepcopy(node.operand))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            self.add(node, "boolean", ast.Constant(not value))
        elif isinstance(value, int):
            self.add(node, "constant +1", ast.Constant(value + 1))
        elif isinstance(value, float):
            self.add(node, "constant", ast.Constant(value * 2 if value else 1.0))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        s = node.slice
        if isinstance(s, ast.Slice) and s.lower is None and s.upper is None and isinstance(s.step, ast.UnaryOp):
            self.add(node, "drop [::-1]", copy.deepcopy(node.value))
        elif isinstance(s, ast.Tuple) and any(isinstance(e, ast.Slice) and e.step is not None for e in s.elts):
            self.add(node, "drop reversed slice", copy.deepcopy(node.value))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        positional = [a for a in node.args if not isinstance(a, ast.Starred)]
        if len(positional) >= 2 and len(positional) == len(node.args):
            first, second = (ast.get_source_segment(self.source, a) for a in node.args[:2])
            if first != second:
                new = copy.deepcopy(node)
                new.args[0], new.args[1] = new.args[1], new.args[0]
                self.add(node, "swap arguments", new)
        self.generic_visit(node)


def find_mutants(root: Path, module: str) -> list[Mutant]:
    source = (root / module).read_text()
    finder = Finder(source)
    finder.visit(ast.parse(source))
    mutants = []
    for index, (node, kind, text) in enumerate(finder.found):
        original = ast.get_source_segment(source, node)
        mutant = Mutant(f"{module}:{index}", module, node.lineno, kind, original, text,
                        (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset))
        try:
            compile(apply(source, mutant), module, "exec")
        except SyntaxError:
            continue
        mutants.append(mutant)
    return mutants


def apply(source: str, mutant: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    starts = offsets(source)
    begin = starts[mutant.start[0] - 1] + utf8_col(lines[mutant.start[0] - 1], mutant.start[1])
    end = starts[mutant.end[0] - 1] + utf8_col(lines[mutant.end[0] - 1], mutant.end[1])
    if source[begin:end] != mutant.original:
        raise RuntimeError(f"{mutant.id}: the source changed since the mutant was made")
    replacement = mutant.replacement
    if "\n" in replacement:  # ast.unparse of a multi-line node: keep it on one logical line
        replacement = f"({replacement})"
    return source[:begin] + replacement + source[end:]


def utf8_col(line: str, col: int) -> int:
    """ast's col_offset counts UTF-8 bytes; the character index of that byte offset."""
    return len(line.encode()[:col].decode(errors="ignore"))


# ----------------------------------------------------------------------------- running


def pytest_runs(python: str, module: str) -> list[list[str]]:
    return [[python, "-m", "pytest", *FAST, *args] for args in TARGETS[module]]


def run_tests(root: Path, python: str, module: str, timeout: float) -> tuple[str, float, str]:
    """('killed' | 'survived' | 'timeout', seconds, first failing test or '')."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    for command in pytest_runs(python, module):
        left = timeout - (time.perf_counter() - start)
        try:
            result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=max(left, 1), env=env)
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - start, ""
        if result.returncode == 5:  # nothing collected: a wrong selection, not a kill
            raise RuntimeError(f"no tests collected by {' '.join(command)}")
        if result.returncode != 0:
            failed = next((line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
            return "killed", time.perf_counter() - start, failed[:300]
    return "survived", time.perf_counter() - start, ""


def drop_bytecode(root: Path, module: str) -> None:
    path = root / module
    for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        cached.unlink()


def run(args: argparse.Namespace) -> None:
    root = Path(args.root).resolve()
    if (root / ".git").exists():
        sys.exit(f"{root} holds .git: mutate a copy, never the checkout")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    modules = args.modules or list(TARGETS)
    if args.replay:
        previous = json.loads(Path(args.replay).read_text())
        planned = [Mutant(**{**m, "start": tuple(m["start"]), "end": tuple(m["end"]), "status": "pending", "seconds": 0.0, "failed": ""})
                   for m in previous["mutants"] if m["module"] in modules]
        kept = {m["id"]: m for m in previous["mutants"]}
        if args.only_survivors:
            planned = [m for m in planned if kept[m.id]["status"] == "survived"]
    else:
        planned = []
        for module in modules:
            found = find_mutants(root, module)
            rng = random.Random(f"{args.seed}:{module}")
            sample = sorted(rng.sample(found, min(args.per_module, len(found))), key=lambda m: (m.line, m.id))
            planned += sample
            print(f"{module}: {len(found)} mutants, {len(sample)} sampled", flush=True)
    record = {"seed": args.seed, "per_module": args.per_module, "root": str(root), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "hashes": {}, "baseline_seconds": {}, "mutants": []}
    for module in dict.fromkeys(m.module for m in planned):
        path = root / module
        original = path.read_text()
        record["hashes"][module] = hashlib.sha256(original.encode()).hexdigest()
        drop_bytecode(root, module)
        status, seconds, failed = run_tests(root, args.python, module, args.max_seconds)
        record["baseline_seconds"][module] = round(seconds, 1)
        if status != "survived":
            sys.exit(f"{module}: the unmutated tests do not pass ({status} {failed})")
        timeout = min(args.max_seconds, 3 * seconds + 30)
        print(f"{module}: baseline green in {seconds:.1f}s, time limit {timeout:.0f}s", flush=True)
        try:
            for mutant in (m for m in planned if m.module == module):
                path.write_text(apply(original, mutant))
                drop_bytecode(root, module)
                mutant.status, mutant.seconds, mutant.failed = run_tests(root, args.python, module, timeout)
                mutant.seconds = round(mutant.seconds, 1)
                record["mutants"].append(asdict(mutant))
                out.write_text(json.dumps(record, indent=1))
                print(f"  {mutant.status:8s} {mutant.seconds:5.1f}s {mutant.id} L{mutant.line} {mutant.kind}: "
                      f"{mutant.original!r} -> {mutant.replacement!r}", flush=True)
        finally:
            path.write_text(original)
            drop_bytecode(root, module)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(record, indent=1))
    report(argparse.Namespace(results=[str(out)]))


def check(args: argparse.Namespace) -> None:
    """Apply one recorded mutant to --root, run the given pytest arguments, restore the module."""
    root = Path(args.root).resolve()
    if (root / ".git").exists():
        sys.exit(f"{root} holds .git: mutate a copy, never the checkout")
    found = [m for name in args.results for m in json.loads(Path(name).read_text())["mutants"] if m["id"] == args.id]
    if not found:
        sys.exit(f"no mutant {args.id} in {args.results}")
    m = found[-1]
    mutant = Mutant(**{**m, "start": tuple(m["start"]), "end": tuple(m["end"])})
    path = root / mutant.module
    original = path.read_text()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        path.write_text(apply(original, mutant))
        drop_bytecode(root, mutant.module)
        result = subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest], cwd=root, env=env)
    finally:
        path.write_text(original)
        drop_bytecode(root, mutant.module)
    print(f"{mutant.id}: {'killed' if result.returncode not in (0, 5) else 'survived' if result.returncode == 0 else 'nothing ran'}")


def report(args: argparse.Namespace) -> None:
    """Killed/total per module for each results file (a later file overrides the statuses it re-ran)."""
    merged: dict[str, dict] = {}
    for index, name in enumerate(args.results):
        data = json.loads(Path(name).read_text())
        for m in data["mutants"]:
            merged[m["id"]] = m
        print(f"== {name} (cumulative)")
        by_module: dict[str, list[dict]] = {}
        for m in merged.values():
            by_module.setdefault(m["module"], []).append(m)
        for module, ms in by_module.items():
            killed = sum(m["status"] == "killed" for m in ms)
            timeouts = sum(m["status"] == "timeout" for m in ms)
            print(f"{module:28s} {killed + timeouts:3d}/{len(ms):3d} killed ({timeouts} of them by the time limit)"
                  f"  {sum(m['seconds'] for m in ms):6.0f}s of test runs")
        for m in merged.values():
            if m["status"] in ("survived", "timeout"):
                print(f"  {m['status']:8s} {m['id']} L{m['line']} {m['kind']}: {m['original']!r} -> {m['replacement']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="make (or replay) mutants and run the tests against each")
    go.add_argument("--root", required=True, help="a copy of the repository (not the checkout)")
    go.add_argument("--python", default=sys.executable, help="an interpreter that imports spix from --root")
    go.add_argument("--out", required=True, help="results JSON")
    go.add_argument("--modules", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    go.add_argument("--seed", type=int, default=18)
    go.add_argument("--per-module", type=int, default=40, help="mutants sampled per module")
    go.add_argument("--max-seconds", type=float, default=240, help="time limit of one mutant's test run")
    go.add_argument("--replay", help="re-run the mutants of this results file instead of sampling")
    go.add_argument("--only-survivors", action="store_true", help="with --replay: only those that survived there")
    go.set_defaults(func=run)
    one = commands.add_parser("check", help="one recorded mutant against the given pytest arguments")
    one.add_argument("--root", required=True)
    one.add_argument("--python", default=sys.executable)
    one.add_argument("--results", action="append", required=True, help="results JSON (repeatable)")
    one.add_argument("id", help="mutant id, module:index")
    one.add_argument("pytest", nargs=argparse.REMAINDER, help="pytest arguments (after --)")
    one.set_defaults(func=check)
    show = commands.add_parser("report", help="killed/total per module and the survivors")
    show.add_argument("results", nargs="+")
    show.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
