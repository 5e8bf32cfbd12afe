"""The `forge` command: generate, chat, info, bench, pull, check.

Errors caused by the input (a bad file, a prompt that does not fit) print one line
`forge: error: ...` and exit with status 1, with no traceback.
"""
from __future__ import annotations

import argparse
import sys

from forge.errors import ForgeError
from forge.hub import DEFAULT_MODEL


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"GGUF path or model name (default: {DEFAULT_MODEL}; also gemma3-270m)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                   help="auto picks the GPU when torch sees one (default: auto)")
    p.add_argument("--ctx", type=int, default=None, help="max context length (default: model's, capped at 8192 on CPU)")


def _add_sampling(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-tokens", "-n", type=int, default=64)
    p.add_argument("--temperature", "-t", type=float, default=temperature,
                   help=f"0 = greedy (default: {temperature})")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")


def _params(a):
    from forge.sampling import SamplingParams

    try:
        return SamplingParams(
            max_tokens=a.max_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
            min_p=a.min_p, repetition_penalty=a.repetition_penalty,
            presence_penalty=a.presence_penalty, frequency_penalty=a.frequency_penalty,
            stop=a.stop, seed=a.seed, ignore_eos=a.ignore_eos)
    except ValueError as e:
        raise ForgeError(str(e)) from None


def _llm(a):
    from forge.llm import LLM

    return LLM(a.model, device=a.device, max_model_len=a.ctx)


def cmd_generate(a) -> int:
    llm = _llm(a)
    params = _params(a)
    prompts = a.prompt or [sys.stdin.read()]
    if len(prompts) == 1 and not a.no_stream:
        print(prompts[0], end="", flush=True) if a.echo else None
        for piece in llm.stream(prompts[0], params):
            print(piece, end="", flush=True)
        print()
        return 0
    for p, out in zip(prompts, llm.generate(prompts, params)):
        print((p if a.echo else "") + out.text)
    return 0


def cmd_chat(a) -> int:
    llm = _llm(a)
    params = _params(a)
    messages: list[dict] = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    print(f"forge chat with {llm.config.name} on {llm.device}. Empty line or Ctrl-D to quit.",
          file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in llm.chat(messages, params, stream=True):
            print(piece, end="", flush=True)
            reply.append(piece)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_info(a) -> int:
    from forge.info import describe

    print(describe(a.model_path))
    return 0


def cmd_pull(a) -> int:
    from forge import hub

    for name in a.names:
        print(hub.pull(name, force=a.force))
    return 0


def cmd_bench(a) -> int:
    from forge.bench import run_bench

    return run_bench(a)


def cmd_check(a) -> int:
    from forge.check import run_check

    return run_check(a)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="forge", description="Run GGUF language models.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="continue a prompt")
    g.add_argument("prompt", nargs="*", help="prompt text (several = one batch; none = stdin)")
    _add_model(g)
    _add_sampling(g, temperature=0.0)
    g.add_argument("--no-stream", action="store_true", help="print only when done")
    g.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with the model's chat template")
    _add_model(c)
    _add_sampling(c, temperature=0.7)
    c.set_defaults(max_tokens=512)
    c.add_argument("--system", default=None, help="system prompt")
    c.set_defaults(fn=cmd_chat)

    i = sub.add_parser("info", help="metadata, tensor types and memory needed")
    i.add_argument("model_path", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    i.set_defaults(fn=cmd_info)

    p = sub.add_parser("pull", help="download a named model into the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_pull)

    b = sub.add_parser("bench", help="prefill and decode throughput (llama-bench-like)")
    b.add_argument("model_path", nargs="?", default=None, metavar="MODEL")
    b.add_argument("--synthetic", default=None, metavar="SHAPE", help="benchmark a synthetic model of this shape")
    b.add_argument("--quant", default="Q4_K_M", help="quant mix of the synthetic model")
    b.add_argument("-p", "--n-prompt", type=int, default=512)
    b.add_argument("-n", "--n-gen", type=int, default=128)
    b.add_argument("-b", "--batch", type=int, default=1, help="concurrent sequences in decode")
    b.add_argument("-d", "--depth", type=int, default=0,
                   help="tokens already in the context (llama-bench's -d): pp processes its prompt "
                        "after DEPTH cached tokens, tg decodes after a DEPTH-token prompt")
    b.add_argument("-r", "--repetitions", type=int, default=3)
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    b.add_argument("--kv-tokens", type=int, default=None, help="KV cache size in tokens (default: what the test needs, plus headroom)")
    b.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    b.add_argument("--no-run-ahead", action="store_true",
                   help="decode without launching step k+1 before step k's tokens reach the host")
    b.add_argument("--no-prefill-graphs", action="store_true",
                   help="run prefill steps eagerly instead of replaying CUDA graphs (to compare)")
    b.add_argument("--no-gc-freeze", action="store_true",
                   help="do not gc.collect() + gc.freeze() after the warm-up (to compare GC hiccups)")
    b.set_defaults(fn=cmd_bench)

    k = sub.add_parser("check", help="compare CPU and GPU backends layer by layer")
    k.add_argument("model_path", nargs="?", default=DEFAULT_MODEL, metavar="MODEL")
    k.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog.")
    k.add_argument("--tol", type=float, default=5e-2, help="max relative difference allowed per layer")
    k.set_defaults(fn=cmd_check)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ForgeError as e:
        print(f"forge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
