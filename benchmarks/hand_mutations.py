"""The deliberate breakages of issue 20, each with the tests that must now fail under it.

    OMP_NUM_THREADS=1 python -m benchmarks.hand_mutations              # every mutation, one pytest run each
    OMP_NUM_THREADS=1 python -m benchmarks.hand_mutations pick_argmax  # one of them
    python -m benchmarks.hand_mutations --list

The script copies the working tree (tracked and untracked, not ignored files) to a temporary folder once,
and for each mutation edits the file there (literal replacements, each of which must match exactly once),
runs its killing tests there with ``pytest -x`` (``PYTHONPATH`` points at the copy and its ``runtime/``, so
the editable installs and the ``svlm`` console script import the mutated code too), restores the file and
reports KILLED (pytest failed) or SURVIVED. The checkout itself is never edited, so running jobs and other work are not disturbed. ``mutmut`` (``benchmarks/mutation.sh``) covers the small pure modules
mechanically; these are the breakages that span modules or need a trained model, which mutmut cannot reach
in an hour on this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (old, new): each old text must occur exactly once
    tests: tuple[str, ...]  # pytest node ids


MUTATIONS = [
    Mutation(
        "image_policy_noop", "Family.apply_image_policy does nothing",
        "factory/families.py", (("for key, value in self.image_policy.items():", "for key, value in {}.items():"),),
        ("tests/test_families.py::test_load_model_applies_image_policy",)),
    Mutation(
        "serving_bare_yield", "RolloutCopy.serving() is a bare yield: generate never reaches the dense copy",
        "factory/train/rollout.py",
        (("        model.generate = self.model.generate\n        try:\n            yield\n        finally:\n"
          "            if had:\n                model.generate = old\n            else:\n                del model.generate\n",
          "        yield\n"),),
        ("tests/test_rollout.py::test_sampled_tokens_have_the_same_logprobs_under_copy_and_policy",
         "tests/test_rollout.py::test_grpo_stage_with_dense_rollouts_trains_and_refreshes")),
    Mutation(
        "no_epsilon", "epsilon / epsilon_high are not passed to trl's GRPOConfig",
        "factory/train/grpo.py", (('        "epsilon": s.epsilon,\n        "epsilon_high": s.epsilon_high,\n', ""),),
        ("tests/test_train.py::test_final_grpo_config_is_checked_too",
         "tests/test_train.py::test_clip_low_stage_scores_with_old_logprobs_and_clips")),
    Mutation(
        "eval_fresh_adapter", "a trained but unevaluated stage is evaluated with a fresh adapter",
        "factory/train/runner.py", (("load_policy(ctx, trainable=False)", "load_policy(ctx, trainable=True)"),),
        ("tests/test_train.py::test_an_adapter_without_evaluation_is_only_evaluated",)),
    Mutation(
        "no_epsilon_high", "epsilon_high is not passed to trl (the upper bound falls back to epsilon)",
        "factory/train/grpo.py", (('        "epsilon_high": s.epsilon_high,\n', ""),),
        ("tests/test_train.py::test_final_grpo_config_is_checked_too",)),
    Mutation(
        "checkpoints_keep_all", "every checkpoint is kept instead of the last two",
        "factory/train/common.py", (('"save_total_limit": 2,', '"save_total_limit": None,'),),
        ("tests/test_train.py::test_stage_outputs_are_written",)),
    Mutation(
        "format_reward_zero", "the format reward is 0 for everything (GRPO then moves only on other rewards)",
        "factory/rewards.py",
        (("return [float(parse_answer(completion_text(c)).well_formed) for c in completions]",
          "return [0.0 for c in completions]"),),
        ("tests/test_train.py::test_grpo_moves_under_the_production_rewards_alone",)),
    Mutation(
        "cli_train_prints_nothing", "`svlm train` trains but prints no stage table",
        "factory/cli.py",
        (("    print(format_table([{\"stage\": name, **done[\"eval\"]} for name, done in results.items()]))\n", ""),),
        ("tests/test_train.py::test_cli_train_success_prints_the_stage_table",)),
    Mutation(
        "pick_argmax", "the runtime's sampler always takes the argmax",
        "runtime/svlm_runtime/package.py", (("        if temperature <= 0:\n", "        if True:\n"),),
        ("tests/test_runtime_unit.py",)),
    Mutation(
        "on_text_once", "the runtime calls on_text once, after generation (the in-loop calls removed)",
        "runtime/svlm_runtime/package.py",
        (("            if on_text is not None and ready > sent:\n                on_text(text[sent:ready])\n"
          "                sent = ready\n", ""),),
        ("tests/test_runtime_unit.py",)),
    Mutation(
        "compare_divergence_agrees", "export's comparison counts every divergence as agreement",
        "export/compare.py", (("        same_tokens += at_tie\n", "        same_tokens += 1\n"),),
        ("tests/test_compare.py",)),
    # the other weak points and the README claims that had no test
    Mutation(
        "quantized_ignores_image", "quantized packages answer without looking at the image (fp32 still does)",
        "runtime/svlm_runtime/package.py",
        (('        features = self.vision.run(None, {"pixel_values": pv.astype(np.float32)})[0]\n',
          '        blind = self.manifest["quantization"]["name"] != "fp32"\n'
          '        features = self.vision.run(None, {"pixel_values": (pv * (not blind)).astype(np.float32)})[0]\n'),),
        ("tests/test_export.py::test_int8_labels_agree_with_pytorch",)),
    Mutation(
        "demo_ignores_image", "the demo answers for a grey image instead of the uploaded one",
        "demo/app.py",
        (("g = model.generate(image, max_new_tokens=max_new_tokens, on_text=chunks.put)",
          "g = model.generate(image.point(lambda _: 128), max_new_tokens=max_new_tokens, on_text=chunks.put)"),),
        ("tests/test_demo.py::test_client_round_trip_answers_with_an_emotion",)),
    Mutation(
        "demo_streams_once", "the demo's ONNX path hands over the reasoning once, after generation",
        "demo/app.py",
        (("                g = model.generate(image, max_new_tokens=max_new_tokens, on_text=chunks.put)\n",
          "                g = model.generate(image, max_new_tokens=max_new_tokens)\n                chunks.put(g.text)\n"),),
        ("tests/test_demo.py::test_reasoning_streams_token_by_token",)),
    Mutation(
        "demo_file_limit", "`svlm demo` accepts files up to 100 MB instead of 25 MB",
        "demo/app.py", (('max_file_size="25mb"', 'max_file_size="100mb"'),),
        ("tests/test_demo.py::test_served_app_limits_files_to_25_mb_and_queues_two_at_a_time_up_to_32",)),
    Mutation(
        "demo_queue_unbounded", "the demo's queue has no size limit",
        "demo/app.py", (("max_size=32)", "max_size=None)"),),
        ("tests/test_demo.py::test_served_app_limits_files_to_25_mb_and_queues_two_at_a_time_up_to_32",)),
    Mutation(
        "svlm_demo_fixed_port", "`svlm demo` ignores --port",
        "factory/cli.py", (("launch(args.runs, args.model, args.host, args.port, args.share)",
                            "launch(args.runs, args.model, args.host, 7860, args.share)"),),
        ("tests/test_demo.py::test_svlm_demo_passes_its_options_to_the_launcher",)),
    Mutation(
        "teacher_label_question", "endpoint teachers are asked the label-only question, not the student's CoT one",
        "factory/cot/teachers.py",
        (('        data, mime = image_bytes(record.image_path, self.cfg.image_max_side)\n        text = question("cot")',
          '        data, mime = image_bytes(record.image_path, self.cfg.image_max_side)\n        text = question("label")'),),
        ("tests/test_cot.py::test_endpoint_teachers_are_asked_exactly_the_students_question",)),
    Mutation(
        "preprocess_bilinear", "InternVL's runtime preprocessing resizes bilinearly instead of with the spec's kernel",
        "runtime/svlm_runtime/preprocess.py",
        (('img = img.resize((spec["width"], spec["height"]), resample=Image.Resampling(spec["resample"]))',
          'img = img.resize((spec["width"], spec["height"]), resample=Image.Resampling.BILINEAR)'),),
        ("tests/test_preprocess.py",)),
    Mutation(
        "latency_in_process", "`svlm bench latency` times every model in the calling process",
        "benchmarks/latency.py",
        (("            proc = subprocess.run(cmd, capture_output=True, text=True)\n",
          "            row_path.write_text(json.dumps(measure_one(str(spec), [str(i) for i in images], runs, warmup, "
          "threads, max_new_tokens)))\n            proc = subprocess.CompletedProcess(cmd, 0, '', '')\n"),),
        ("tests/test_bench.py::test_cli_bench_latency_times_each_model_in_its_own_process",)),
    Mutation(
        "cli_export_prints_nothing", "`svlm export` exports but reports nothing",
        "factory/cli.py",
        (("        print(f\"{quant}: {m['size_bytes'] / 1e6:.2f} MB; max |Δlogits| vs PyTorch {v['max_abs_logit_diff']:.2e}; \"\n",
          "        continue\n        print(f\"{quant}: {m['size_bytes'] / 1e6:.2f} MB; max |Δlogits| vs PyTorch {v['max_abs_logit_diff']:.2e}; \"\n"),),
        ("tests/test_export.py::test_cli_export_success_prints_each_package",)),
    Mutation(
        "ci_browser_optional", ".ci/run only warns when chromium cannot be installed",
        ".ci/run",
        (('    || { echo "error: chromium could not be installed; the demo\'s browser test cannot run" >&2; exit 1; }\n',
          '    || echo "warning: chromium could not be installed" >&2\n'),),
        ("tests/test_ci.py",)),
]


def copy_tree(dest: Path) -> Path:
    """Copy the checkout's tracked and untracked (not ignored) files to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_env(tree: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "runtime")])}  # svlm_runtime lives in runtime/
    where = subprocess.run([sys.executable, "-c", "import factory, export, svlm_runtime as r; "
                            "print(factory.__file__, export.__file__, r.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.split()
    if not all(Path(w).resolve().is_relative_to(tree.resolve()) for w in where):
        raise SystemExit(f"the copy's packages do not shadow the installed ones: {where}")
    return env


def apply(m: Mutation, tree: Path) -> str:
    """Edit ``m.path`` under ``tree``; returns the original text."""
    path = tree / m.path
    original = text = path.read_text()
    for old, new in m.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{m.name}: the text to replace occurs {text.count(old)} times in {m.path}; "
                             "update the mutation")
        text = text.replace(old, new)
    path.write_text(text)
    return original


def run(m: Mutation, tree: Path, env: dict) -> tuple[bool, float, str]:
    """Apply ``m`` in ``tree``, run its tests there, restore; (killed, seconds, last lines of pytest's output)."""
    original = apply(m, tree)
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                              cwd=tree, env=env, capture_output=True, text=True)
    finally:
        (tree / m.path).write_text(original)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return proc.returncode != 0, time.time() - t0, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests")
    parser.add_argument("--markdown", help="also write the results as a markdown table to this file")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] or MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}\n    {m.path}; killed by {' '.join(m.tests)}")
        return 0
    survived, rows = [], []
    tree = copy_tree(Path(tempfile.mkdtemp(prefix="svlm_mutations_")))
    env = test_env(tree)
    for m in chosen:  # every edit must still apply before anything runs (the code moves on)
        (tree / m.path).write_text(apply(m, tree))  # apply, then put the original back
    for m in chosen:
        killed, seconds, tail = run(m, tree, env)
        print(f"{'KILLED  ' if killed else 'SURVIVED'} {m.name} ({seconds:.0f} s): {m.what}", flush=True)
        tests = "<br>".join(f"`{t.replace('tests/', '')}`" for t in m.tests)
        rows.append(f"| `{m.name}` | {m.what} (`{m.path}`) | {tests} | {'killed' if killed else '**survived**'} "
                    f"| {seconds:.0f} |")
        if not killed:
            survived.append(m.name)
            print("    " + tail.replace("\n", "\n    "))
    summary = f"{len(chosen) - len(survived)} / {len(chosen)} killed" + (f"; survived: {survived}" if survived else "")
    print(summary)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(
            "| mutation | what it breaks | killing tests (`pytest -x`) | result | s |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\n{summary}\n")
    shutil.rmtree(tree, ignore_errors=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
