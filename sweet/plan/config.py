"""Loading and validation of the workflow configuration.

The Snakefile calls :func:`validate` before it plans a single job: the JSON schema first (structure, types), then
the checks a schema cannot express (references between sections, exit layers against the backbone's depth,
local files present, budgets that fit the training pool). Every failure is a ``UserError`` whose message starts
with the dotted key, so the user sees one line saying what to fix.

Deliberately light: PyYAML and jsonschema only, never torch or transformers, so `snakemake -n` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sweet import methods  # the method registry: standard library only
from sweet.backbones import BACKBONES, POOLINGS, resolve_pooling  # the registry imports no torch
from sweet.errors import UserError
from sweet.plan.cluster import CLUSTER_DEFAULTS, JOB_START_MINUTES
from sweet.plan.estimates import SYNTHETIC_VOCAB, pool_size
from sweet.plan.settings import KNOWN_BACKBONES, RESULTS, Model, slug
from sweet.tasks import GLUE_TASKS, MIN_CALIBRATION, TASK_SOURCES  # standard library only

# Folders under results/ that are not a grid's: a grid's tables, figures and report go to results/<grid>/, so a
# grid may not take one of these names.
RESERVED_GRID_NAMES = ("runs", "data", "logs", "backbones", "benchmarks", "hub-cache")
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


# ------------------------------------------------------------------------------------------------ public API
def load_config_file(path: str | Path) -> dict:
    """Read a YAML configuration file; a syntax error names the file and line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run from the repository root or pass --configfile") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err}); fix the file") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{where}: not valid YAML ({problem}); fix the syntax (spaces, not tabs; balanced brackets)")\
            from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: must be a mapping of keys (grid:, grids:, tasks:, ...), got {type(loaded).__name__}")
    return loaded


def merge(base: dict, overlay: dict) -> dict:
    """``overlay`` merged into a copy of ``base`` key by key, as snakemake merges --configfile overlays."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_schema(path: str | Path | None = None) -> dict:
    import yaml

    schema = yaml.safe_load(Path(path or SCHEMA_PATH).read_text())
    fill_registry_enums(schema)
    return schema


def fill_registry_enums(schema: dict) -> None:
    """The schema's lists of registry names, taken from the registries when the schema is loaded rather than
    copied into it: the exit rules (``sweet.exits``), methods (``sweet.methods``), poolings (``sweet.backbones``),
    task sources and GLUE tasks (``sweet.tasks``), risks (``sweet.risk``, by name). A source's keys become the
    schema branch of tasks of that source, unless the schema types them itself."""
    from sweet.exits import EXIT_RULES  # numpy only; imported here so planning that never validates skips it
    from sweet.plan.export_policy import RISKS  # the risk registry's names (sweet.risk.RISKS)

    defs, properties = schema.get("$defs", {}), schema.get("properties", {})

    def at(node: dict | None, *keys: str) -> dict | None:
        for key in keys:
            node = (node or {}).get(key)
        return node

    grid = at(properties, "grids", "additionalProperties", "properties")
    export = at(defs, "export", "properties")
    enums = {
        tuple(EXIT_RULES): [at(properties, "claims", "properties", "exit_rule"), at(export, "strategy"),
                            at(export, "rule")],
        tuple(methods.names()): [at(export, "method"), at(grid, "methods", "items")],
        tuple(POOLINGS): [at(properties, "models", "additionalProperties", "properties", "pooling")],
        tuple(TASK_SOURCES): [at(properties, "tasks", "additionalProperties", "properties", "source")],
        RISKS: [at(export, "risk"), at(properties, "risk_control", "properties", "risks", "items")],
    }
    tasks = at(properties, "tasks", "additionalProperties") or {}
    branches = tasks.get("allOf", [])
    typed = {b["if"]["properties"]["source"]["const"]: b for b in branches}
    for name, source in TASK_SOURCES.items():
        if name not in typed:  # a source the schema does not type: its keys, any values
            branches.append({"if": {"properties": {"source": {"const": name}}},
                             "then": {"additionalProperties": False, "properties": dict.fromkeys(source.keys, True)}})
    glue_task = at(typed.get("glue"), "then", "properties", "glue_task")
    enums[tuple(GLUE_TASKS)] = [glue_task]
    for names, places in enums.items():
        for place in places:
            if place is not None:
                place.pop("type", None)
                place["enum"] = list(names)


def validate(config: dict, schema_path: str | Path | None = None, base_dir: str | Path = ".") -> dict[str, Model]:
    """Check ``config`` completely; return the resolved models by name. Raises ``UserError`` on the first problem.

    ``base_dir`` is where relative paths in the configuration (local data files, local backbones) are resolved:
    the directory snakemake runs in.
    """
    _coerce_command_line(config)
    _check_schema(config, load_schema(schema_path))
    _check_cluster(config)
    base = Path(base_dir)
    tasks: dict = config["tasks"]
    models = resolve_models(config, base)

    for gname in config["grids"]:
        if gname in RESERVED_GRID_NAMES:
            raise UserError(f"grids.{gname}: the name '{gname}' is taken by {RESULTS}/{gname}/, which is not a grid's "
                            f"folder ({', '.join(RESERVED_GRID_NAMES)} are reserved); rename the grid")
    if config["grid"] not in config["grids"]:
        name = config["grid"]
        raise UserError(f"grid: '{name}' is not defined; use one of {', '.join(sorted(config['grids']))} "
                        f"(or define grids.{name} in a --configfile overlay)")
    for gname, grid in config["grids"].items():
        key = f"grids.{gname}"
        for t in grid["tasks"]:
            if t not in tasks:
                raise UserError(f"{key}.tasks: task '{t}' is not defined under tasks:; "
                                f"define it or use one of {', '.join(sorted(tasks))}")
        for m in grid["models"]:
            if m not in models:
                raise UserError(f"{key}.models: model '{m}' is not defined under models:; "
                                f"define it or use one of {', '.join(sorted(models))}")
        for field_name in ("budgets", "seeds"):
            for v in grid[field_name]:
                if not _is_int(v):
                    raise UserError(f"{key}.{field_name}: {v!r} must be an integer")

    _check_method_options(config)

    from sweet.plan.export_policy import check_exports  # light: no torch

    check_exports(config)

    claims = config.get("claims") or {}
    fast, slow = claims.get("fast_speedup", 2.0), claims.get("slow_speedup", 1.5)
    if slow > fast:
        raise UserError(f"claims.slow_speedup: {slow} is above claims.fast_speedup ({fast}); 'slow' speedups must "
                        "lie below 'fast' ones (the paper: slow ≤ 1.5×, fast ≥ 2×)")

    if config.get("calibrate_on", "pool") == "eval" and (config.get("risk_control") or {}).get("enabled", True):
        raise UserError("calibrate_on: eval chooses risk-controlled thresholds on the evaluation set itself, which "
                        "voids their guarantee; set calibrate_on: pool, or risk_control: {enabled: false} to "
                        "reproduce the reference's protocol without risk control")

    # What only the selected grid needs: its data files present, its budgets fitting the pool.
    grid = config["grids"][config["grid"]]
    calibration = config.get("calibration_size", 1000)
    on_pool = config.get("calibrate_on", "pool") == "pool"
    for t in grid["tasks"]:
        spec = tasks[t]
        for part in TASK_SOURCES[spec["source"]].files:  # a local task's files
            if part in spec:
                path = base / spec[part]
                if not path.is_file():
                    raise UserError(f"tasks.{t}.{part}: file '{spec[part]}' not found (relative paths are read from "
                                    f"{base.resolve()}); fix the path")
                if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
                    raise UserError(f"tasks.{t}.{part}: '{spec[part]}' must end in .csv, .tsv or .jsonl")
        pool = pool_size(spec, base)
        if pool is None:
            continue
        for b in grid["budgets"]:
            # As `split` does: the calibration split may shrink (with a warning) down to MIN_CALIBRATION.
            need = b + (min(calibration, MIN_CALIBRATION) if on_pool else 0)
            if need > pool:
                extra = f" plus at least {need - b} calibration examples" if on_pool else ""
                raise UserError(
                    f"grids.{config['grid']}.budgets: budget {b}{extra} needs {need} training examples but task "
                    f"'{t}' has {pool}; lower the budget to at most {pool - (need - b)}"
                    f"{' or set calibrate_on: eval' if on_pool else ''}"
                )
    return models


def resolve_models(config: dict, base: Path = Path(".")) -> dict[str, Model]:
    """The configuration's models, resolved (sizes from the hub cache where a backbone has been fetched)."""
    models = {name: _resolve_model(name, spec, base) for name, spec in config["models"].items()}
    _check_slugs(models)
    _arch_from_hub_cache(models, config, base)
    return models


# ------------------------------------------------------------------------------------------------ internals
def _check_cluster(config: dict) -> None:
    """What the schema cannot say about the cluster keys; one line naming the key on failure."""
    cluster = {**CLUSTER_DEFAULTS, **(config.get("cluster") or {})}
    limit, signal_minutes = cluster["max_runtime_minutes"], cluster["signal_minutes"]
    if limit is not None and limit < 2 * JOB_START_MINUTES:
        raise UserError(f"cluster.max_runtime_minutes: {limit} leaves no time after a job's start-up "
                        f"(~{JOB_START_MINUTES} min); use a partition with a limit of at least "
                        f"{2 * JOB_START_MINUTES} minutes")
    if limit is not None and signal_minutes >= limit:
        raise UserError(f"cluster.signal_minutes: {signal_minutes} must be shorter than "
                        f"cluster.max_runtime_minutes ({limit}); a few minutes is enough")
    gpus = config.get("gpus")
    if gpus is not None and gpus > 1:
        # Several GPUs in one job split each batch between them (DataParallel): the configured batch must divide.
        sizes = {int((config.get("training") or {}).get("batch_size", 16))}
        sizes |= {int(m["training"]["batch_size"]) for m in config["models"].values()
                  if isinstance(m.get("training"), dict) and "batch_size" in m["training"]}
        sizes |= {int(g["training"]["batch_size"]) for g in config["grids"].values()
                  if isinstance(g.get("training"), dict) and "batch_size" in g["training"]}
        bad = sorted(b for b in sizes if b % gpus)
        if bad:
            raise UserError(f"gpus: {gpus} GPUs per job would split batches of {bad[0]} unevenly (training.batch_size); "
                            f"use a batch size divisible by {gpus}, or gpus: 1")


def _check_method_options(config: dict) -> None:
    """``method_options`` (top level, and each grid's over it): mappings of a registry method's name to its
    options, each checked by the registry (unknown option, out of range: one line naming the dotted key)."""
    sections = [("method_options", config.get("method_options") or {})]
    sections += [(f"grids.{g}.method_options", spec.get("method_options") or {})
                 for g, spec in config["grids"].items()]
    for key, section in sections:
        for name, options in section.items():
            if name not in methods.METHODS:
                raise UserError(f"{key}.{name}: '{name}' is not a method; use one of {', '.join(methods.names())}")
            if options is not None and not isinstance(options, dict):
                raise UserError(f"{key}.{name}: must be a mapping of option → value, got {options!r}")
            # Each side checked whole, so any key-by-key merge of the two is valid too.
            methods.resolve_options(name, options, f"{key}.{name}")


def _coerce_command_line(config: dict) -> None:
    """`--config partial=true gpus=null cluster='{max_mem_mb: 8000}' method_options=…` arrive as strings (snakemake reads
    mappings with YAML's BaseLoader): read the keys whose schema wants booleans, numbers, lists or null as YAML
    would."""
    import yaml

    def typed(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        return yaml.safe_load(value) if isinstance(value, str) else value

    for key in ("keep_checkpoints", "partial"):
        if isinstance(config.get(key), str) and config[key].lower() in ("yes", "no"):
            config[key] = config[key].lower() == "yes"
    for key in ("keep_checkpoints", "partial", "gpus", "scratch_dir"):
        if isinstance(config.get(key), str) and config[key].lower() in ("true", "false", "null", "none", "~", ""):
            config[key] = typed(config[key].lower().replace("none", "null"))
    # the sections of settings (not of names or paths, which must stay strings: a revision "0123456" is no number),
    # to any depth: --config latency='{batch_sizes: [1, 32]}' risk_control='{enabled: false}'
    for key in ("cluster", "training", "latency", "operating_points", "risk_control", "claims"):
        if isinstance(config.get(key), dict):
            config[key] = typed(config[key])
    # --config method_options='{sep: {separation: 0.25}}': its numbers sit one mapping deeper
    if isinstance(config.get("method_options"), dict):
        config["method_options"] = {name: {k: typed(v) for k, v in options.items()} if isinstance(options, dict)
                                    else options for name, options in config["method_options"].items()}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _check_schema(config: dict, schema: dict) -> None:
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = list(validator.iter_errors(config))
    if not errors:
        return
    # Deepest, then first in document order: the most specific message is the most useful one.
    error = min(errors, key=lambda e: (-len(e.absolute_path), [str(p) for p in e.absolute_path]))
    error = _deepest(error)
    raise UserError(_describe(error))


def _deepest(error: Any) -> Any:
    """Descend into oneOf/anyOf/if-then contexts to the error that names the actual offending key."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def _describe(error: Any) -> str:
    key = _key(error.absolute_path)
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        known = ", ".join(k for k in error.schema.get("properties", {}) if k != "source") or "none"
        prefix = "" if key == "(top level)" else f"{key}."
        return f"{prefix}{extra[0] if extra else '?'}: unknown key; known keys here: {known} (check the spelling)"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        prefix = "" if key == "(top level)" else f"{key}."
        return f"{prefix}{missing}: missing; add it (see config.yaml for an example)"
    if kind == "type":
        want = error.validator_value
        if "minimum" in error.schema and want == "integer":
            return f"{key}: must be an integer ≥ {error.schema['minimum']}, got {value!r}"
        return f"{key}: must be {_a(want)}, got {value!r}"
    if kind in ("minimum", "exclusiveMinimum"):
        bound = "≥" if kind == "minimum" else ">"
        return f"{key}: must be {bound} {error.validator_value}, got {value!r}"
    if kind == "enum":
        return f"{key}: {value!r} is not one of {', '.join(map(str, error.validator_value))}"
    if kind == "const":
        return f"{key}: must be {error.validator_value!r}, got {value!r}"
    if kind == "pattern" and "propertyNames" in error.absolute_schema_path:
        return (f"{key}: name {value!r} may only hold letters, digits, '.', '_' and '-'"
                f"{' (and one /)' if key == 'models' else ''} (it becomes a folder name under {RESULTS}/); rename it")
    if kind == "pattern":
        return (f"{key}: {value!r} may only hold letters, digits, '.', '_' and '-' (it becomes a folder name under "
                f"{RESULTS}/); rename it")
    if kind == "minItems":
        return f"{key}: must list at least {error.validator_value} item(s)"
    if kind == "minProperties":
        return f"{key}: must define at least {error.validator_value} entry"
    if kind == "uniqueItems":
        return f"{key}: {value!r} lists an item twice; remove the duplicate"
    if kind == "maxLength":
        return f"{key}: {value!r} is longer than {error.validator_value} characters"
    if kind == "oneOf":
        return f"{key}: must be a hub id or local folder (string) or an inline mapping with model_type and sizes"
    return f"{key}: {error.message}"


def _a(json_type: Any) -> str:
    names = {"integer": "an integer", "number": "a number", "string": "a string", "object": "a mapping",
             "array": "a list", "boolean": "true or false"}
    if isinstance(json_type, list):
        return " or ".join(names.get(t, t) for t in json_type)
    return names.get(json_type, str(json_type))


def _resolve_model(name: str, spec: dict, base: Path) -> Model:
    key = f"models.{name}"
    layers = spec["exit_layers"]
    if not layers or any(not _is_int(k) for k in layers) or layers[0] < 1 or any(
            b <= a for a, b in zip(layers, layers[1:])):
        raise UserError(f"{key}.exit_layers: must be strictly increasing integers ≥ 1 (layer counts, 'after layer "
                        f"k'), got {layers}; e.g. [1, 4, 6, 12]")
    backbone = spec["backbone"]
    arch: dict[str, int] | None
    if isinstance(backbone, dict):
        kind = "inline"
        arch = {k: backbone[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")}
        arch["vocab_size"] = SYNTHETIC_VOCAB
        arch["max_position_embeddings"] = backbone.get("max_position_embeddings", 512)
        if backbone["hidden_size"] % backbone["num_attention_heads"]:
            raise UserError(f"{key}.backbone.hidden_size: {backbone['hidden_size']} must be a multiple of "
                            f"num_attention_heads ({backbone['num_attention_heads']})")
    elif backbone in KNOWN_BACKBONES:
        kind, arch = "hub", dict(KNOWN_BACKBONES[backbone])
    elif _looks_local(backbone, base):
        kind = "local"
        folder = base / Path(backbone).expanduser()
        if not folder.is_dir():
            raise UserError(f"{key}.backbone: local folder '{backbone}' not found (relative paths are read from "
                            f"{base.resolve()}); fix the path or give a hub id such as bert-base-uncased")
        arch = _local_arch(folder, f"{key}.backbone")
    else:
        kind, arch = "hub", None
        if backbone.startswith("/") or ".." in backbone.split("/") or backbone.count("/") > 1:
            raise UserError(f"{key}.backbone: '{backbone}' is neither a local folder nor a hub id (org/name)")
    depth = arch.get("num_hidden_layers") if arch else None
    _check_depth(key, layers, depth)
    pooling = spec.get("pooling")
    model_type = backbone.get("model_type") if isinstance(backbone, dict) else (arch or {}).get("model_type")
    if pooling is not None and model_type in BACKBONES:
        resolve_pooling(model_type, pooling, field=f"{key}.pooling")  # e.g. cls on a decoder
    revision = spec.get("revision")
    if revision is not None and kind != "hub":
        raise UserError(f"{key}.revision: only a hub backbone has revisions ('{backbone}' is {kind}); remove it")
    return Model(name=name, slug=slug(name), backbone=backbone, kind=kind, exit_layers=list(layers),
                 training=dict(spec.get("training") or {}), arch=arch, pooling=pooling, revision=revision)


def _arch_from_hub_cache(models: dict[str, Model], config: dict, base: Path) -> None:
    """Sizes of hub backbones unknown offline, once fetched: the plan (runtime, memory, disk) then uses them."""
    from sweet.plan.hub import cached_snapshot_folder

    cache = Path(config.get("hub_cache", "results/hub-cache")).expanduser()
    for model in models.values():
        if model.kind != "hub" or model.arch is not None:
            continue
        folder = cached_snapshot_folder(model.backbone, cache if cache.is_absolute() else base / cache,
                                        model.revision or "main")
        if folder is None:
            continue
        model.arch = _local_arch(folder, f"models.{model.name}.backbone")
        if model.arch is not None:
            _check_depth(f"models.{model.name}", model.exit_layers, model.arch.get("num_hidden_layers"))


def _check_depth(key: str, layers: list[int], depth: int | None) -> None:
    if depth is not None and layers[-1] > depth:
        raise UserError(f"{key}.exit_layers: {layers} goes beyond the backbone's {depth} layers; the last exit "
                        f"must be ≤ {depth}")


def _looks_local(backbone: str, base: Path) -> bool:
    return backbone.startswith(("/", "./", "../", "~")) or (base / backbone).is_dir() or backbone.count("/") > 1


def _local_arch(folder: Path, key: str) -> dict[str, int] | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{key}: '{folder}' has no config.json; point it at a saved Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{key}: '{cfg_path}' is not valid JSON ({err}); re-save the model") from None
    needed = ("num_hidden_layers", "hidden_size", "intermediate_size")
    if not all(_is_int(cfg.get(k)) for k in needed):
        return None
    arch = {k: cfg[k] for k in (*needed, "vocab_size", "max_position_embeddings", "type_vocab_size")
            if _is_int(cfg.get(k))}
    if isinstance(cfg.get("model_type"), str):
        arch["model_type"] = cfg["model_type"]
    return arch


def _check_slugs(models: dict[str, Model]) -> None:
    seen: dict[str, str] = {}
    for name, model in models.items():
        if model.slug in seen:
            raise UserError(f"models.{name}: its folder name '{model.slug}' collides with models.{seen[model.slug]}; "
                            "rename one of them")
        seen[model.slug] = name


