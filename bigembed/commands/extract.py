"""bigembed extract --model SPEC [--data SPEC] --out DATASET --layers a,b [...] | --list-layers"""

from __future__ import annotations


def register(sub) -> None:
    from ..extract.backends import DEVICES

    p = sub.add_parser(
        "extract", help="capture a PyTorch model's layer activations as spaces",
        description="Run a model over data once and store the activations of the named layers, "
        "one space per layer, plus label/prediction/confidence/loss per instance. MODEL: "
        "'package.module:factory' (returns an nn.Module), a TorchScript / torch.export file, or "
        "a built-in: digits (demo CNN; data: augmented digits, --n of them), vit_b16 (random "
        "weights; data: random_images). DATA: 'package.module:factory' (a Dataset or an "
        "iterable of batches). Rerunning a killed extraction resumes it.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", help="data factory (default for --model digits: the digits)")
    p.add_argument("--n", type=int, help="instances to make, for built-in data")
    p.add_argument("--seed", type=int, default=0, help="seed of built-in data")
    p.add_argument("--out", help="dataset directory to write; an existing dataset gets the new "
                   "spaces added when the data has its row count")
    p.add_argument("--weights", metavar="A.pt,B.pt",
                   help="state-dict files (checkpoints of one run) loaded into the model in "
                   "turn; each layer becomes a space per checkpoint, LAYER@TAG, with "
                   "prediction@TAG, confidence@TAG, loss@TAG, correct@TAG columns")
    p.add_argument("--tag", metavar="A,B",
                   help="names of the checkpoints (default: the --weights files' stems); "
                   "without --weights, one name for this model's spaces and scores")
    p.add_argument("--layers", help="comma-separated layer names (see --list-layers)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the model's layer names with their output shapes, then stop")
    p.add_argument("--pooling", default="mean", choices=["mean", "max", "cls", "flatten"],
                   help="how non-vector outputs become vectors (default mean)")
    p.add_argument("--batch-size", default="256", help="an integer, or auto (halve on OOM)")
    p.add_argument("--device", default="auto",
                   choices=["auto", *(n.removeprefix("torch-") for n in DEVICES.names())],
                   help="where the model runs: " + DEVICES.help())
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="autocast precision on the device (default none)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="storage dtype of the vectors")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: 0 on CPU, 8 on "
                   "CUDA)")
    p.add_argument("--shard-rows", type=int, help="rows per shard (default: about 256 MB)")
    p.add_argument("--no-background-writer", action="store_true",
                   help="write shards in the main thread")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset at --out made with other settings")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ._common import emit_json, human_bytes, say, table

    if args.list_layers:
        from ..extract.run import inspect_layers

        rows = inspect_layers(model=args.model, data=args.data, n=args.n, seed=args.seed)
        if args.json:
            emit_json(rows)
            return 0
        print(table([[r["name"], r["type"], "" if r["output_shape"] is None else
                      "x".join(map(str, r["output_shape"]))] for r in rows],
                    ["layer", "type", "output shape"]))
        return 0
    if not args.out:
        raise InputError("--out is required (the dataset directory to write)")
    if not args.layers:
        if args.model == "digits":
            from ..models.digits import DEFAULT_LAYERS

            args.layers = ",".join(DEFAULT_LAYERS)
        else:
            raise InputError("--layers is required: comma-separated layer names (see "
                             "--list-layers)")
    if args.model == "digits" and args.data is None and args.n is None:
        raise InputError("--model digits: pass --n, the number of digits to make")
    from ..extract.run import extract

    bs = args.batch_size if args.batch_size == "auto" else _int("--batch-size", args.batch_size)
    r = extract(model=args.model, data=args.data, out=args.out, layers=args.layers,
                pooling=args.pooling, batch_size=bs, device=args.device,
                amp=None if args.amp == "none" else args.amp, dtype=args.dtype,
                workers=args.workers, shard_rows=args.shard_rows,
                background_writer=not args.no_background_writer, overwrite=args.overwrite,
                n=args.n, seed=args.seed, weights=args.weights, tag=args.tag)
    if args.json:
        emit_json(r.to_json())
        return 0
    if r.cached:
        say(f"{r.path} already holds this extraction ({r.rows} rows, spaces "
              f"{list(r.spaces)}); nothing to do")
        return 0
    dims = ", ".join(f"{k} ({d})" for k, d in r.dims.items())
    resumed = f", resumed after {r.rows_resumed} rows" if r.rows_resumed else ""
    say(f"extracted {r.rows} rows into {r.path}: spaces {dims}, {r.dtype}, {r.shards} "
        f"shard(s) each, {human_bytes(r.bytes)}{resumed}")
    say(f"{r.rows_computed} items in {r.seconds:.1f}s ({r.items_per_s:,.0f} items/s) on "
        f"{r.device} ({r.backend}, batch {r.batch_size}, amp {r.amp or 'none'})")
    return 0


def _int(name, v):
    from ..errors import InputError

    try:
        return int(v)
    except ValueError:
        raise InputError(f"{name} must be an integer or 'auto', got {v!r}") from None
