"""XNLI cloze scoring: polyprune (shared-prefix KV reuse, length-sorted batches) vs lm-eval's
HFLM.loglikelihood on the very same requests (empty context + the whole filled template, which
is how lm-eval's own ``xnli_*`` tasks score), same model, same batch size.

Prints both wall times, the speed ratio and whether the predictions are identical.

    python benchmarks/eval_speed.py --model embedded --lang en --limit 30 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("POLYPRUNE_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--lang", default="en")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data-dir", default=os.environ.get("POLYPRUNE_DATA_DIR"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    import polyprune as pp
    from polyprune.data.xnli import load_xnli
    from polyprune.evaluate.cloze import XNLI_TEMPLATE, classify

    model, tok = pp.load_model(args.model)
    items = load_xnli(args.lang, "test", args.data_dir)[: args.limit]
    k = len(XNLI_TEMPLATE.verbalizers)
    print(f"model {args.model}, XNLI {args.lang} test, {len(items)} examples x {k} candidates, "
          f"batch size {args.batch_size}, {torch.get_num_threads()} threads")

    classify(model, tok, items[:2], XNLI_TEMPLATE, batch_size=args.batch_size)  # warm-up
    t0 = time.perf_counter()
    ours = classify(model, tok, items, XNLI_TEMPLATE, batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0
    print(f"polyprune: {t_ours:.1f} s")

    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("lm-eval not installed: no comparison")
        return
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=("", XNLI_TEMPLATE.fill(it, v)), idx=j)
            for it in items for j, v in enumerate(XNLI_TEMPLATE.verbalizers)]
    lm.loglikelihood(reqs[:2 * k], disable_tqdm=True)  # warm-up
    t0 = time.perf_counter()
    ll = [x[0] for x in lm.loglikelihood(reqs, disable_tqdm=True)]
    t_ref = time.perf_counter() - t0
    print(f"lm-eval HFLM.loglikelihood: {t_ref:.1f} s")

    theirs = [max(range(k), key=lambda j: (ll[i * k + j], -j)) for i in range(len(items))]
    same = [o["pred"] for o in ours] == theirs
    diff = max(abs(o["sum"][j] - ll[i * k + j]) for i, o in enumerate(ours) for j in range(k))
    acc = sum(o["pred"] == it["label"] for o, it in zip(ours, items)) / len(items)
    print(f"speed ratio (lm-eval / polyprune): {t_ref / t_ours:.2f}x")
    print(f"predictions identical: {same}; max |log-likelihood difference|: {diff:.2e}; accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
