"""A small builder of the repository's Containerfile, for machines without a container engine
or a registry: the images `make images` builds with Docker or Podman, built here from the same
file, so there is one definition of them and not two that drift apart.

It reads the Containerfile's stages and runs them as a container engine would, for the
instructions that file uses: `ARG`, `FROM` (an earlier stage, or a base image the caller
provides, since none can be pulled), `ENV`, `WORKDIR`, `COPY` (from the build context, filtered
by `.containerignore`, or `--from` a stage), `RUN` (`/bin/sh -c` chrooted into the stage's root
file system, in private mount and process namespaces, with the host's network for apt and pip),
`LABEL`, `USER`, `EXPOSE`, `ENTRYPOINT` and `CMD`. Anything else is refused by name. Each
stage's result is cached under a hash of its base, its instructions, the build arguments and
the files it copies, so an unchanged stage is never rebuilt.

Every image is one layer (the stage's whole root file system).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vauban.devcluster.oci import ImageConfig

logger = logging.getLogger(__name__)

SUPPORTED = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "LABEL", "USER", "EXPOSE"}
SUPPORTED |= {"ENTRYPOINT", "CMD"}


class ContainerfileError(RuntimeError):
    """The Containerfile uses what this builder does not do, or a step failed."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int

    def __str__(self) -> str:
        return f"line {self.line}: {self.keyword} {self.value}"


def parse(text: str) -> list[Instruction]:
    """Instructions, with continuation lines joined and comment lines dropped (also inside a
    continued instruction, as container engines do)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, value = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
    if pending:
        raise ContainerfileError(f"line {start}: the last instruction ends with a backslash")
    return instructions


_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def substitute(text: str, variables: dict[str, str]) -> str:
    """`$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}`, as in a
    Containerfile (unset names become empty)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        value = variables.get(name, "")
        op = match.group("op")
        if op == "-":
            return value or match.group("word")
        if op == "+":
            return match.group("word") if value else ""
        return value

    return _VARIABLE.sub(replace, text)


def _pairs(text: str) -> dict[str, str]:
    """`KEY=value ...` (quotes allowed), or the old `KEY value` form."""
    tokens = shlex.split(text)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    pairs = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ContainerfileError(f"expected KEY=value, got {token!r}")
        pairs[key] = value
    return pairs


def _exec_form(text: str) -> list[str]:
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ContainerfileError(f"not a JSON list of strings: {text}")
        return value
    return ["/bin/sh", "-c", text]


# -- .containerignore ---------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end == -1:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : end + 1].replace("[!", "[^"))
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class IgnoreRules:
    """A `.containerignore` (`.dockerignore`): the last pattern matching a path or one of its
    parent folders decides; `!` re-includes."""

    rules: tuple[tuple[re.Pattern[str], bool], ...]

    @classmethod
    def read(cls, context: Path) -> IgnoreRules:
        for name in (".containerignore", ".dockerignore"):
            path = context / name
            if path.is_file():
                lines = path.read_text(encoding="utf-8").splitlines()
                break
        else:
            lines = []
        rules = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = str(PurePosixPath(line.removeprefix("!").strip().strip("/")))
            rules.append((_pattern_regex(pattern), negated))
        return cls(tuple(rules))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for regex, negated in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negated
        return excluded


# -- stages -----------------------------------------------------------------------------------


@dataclass
class Stage:
    index: int
    name: str
    base: str
    instructions: list[Instruction]


@dataclass
class Built:
    rootfs: Path
    config: ImageConfig
    key: str


BaseProvider = Callable[[], tuple[Path, ImageConfig, str]]
"""Builds (or finds cached) a base image: its root file system folder (copied, never
changed), its config, and a key that changes with its content."""


@dataclass
class _State:
    env: dict[str, str]
    args: dict[str, str]
    workdir: str
    config: ImageConfig
    user: str = ""
    copied_stages: list[str] = field(default_factory=list)


class ContainerfileBuilder:
    def __init__(
        self,
        containerfile: Path,
        context: Path,
        *,
        cache: Path,
        bases: dict[str, BaseProvider],
        build_args: dict[str, str] | None = None,
    ) -> None:
        self.containerfile = containerfile
        self.context = context
        self.cache = cache
        self.bases = bases
        self.build_args = build_args or {}
        instructions = parse(containerfile.read_text(encoding="utf-8"))
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for instruction in instructions:
            if instruction.keyword not in SUPPORTED:
                raise ContainerfileError(f"{instruction}: {instruction.keyword} is not supported")
            if instruction.keyword == "FROM":
                words = instruction.value.split()
                if len(words) == 3 and words[1].upper() == "AS":
                    name = words[2]
                elif len(words) == 1:
                    name = str(len(self.stages))
                else:
                    raise ContainerfileError(f"{instruction}: expected FROM image [AS name]")
                self.stages.append(Stage(len(self.stages), name, words[0], []))
            elif not self.stages:
                if instruction.keyword != "ARG":
                    raise ContainerfileError(f"{instruction}: only ARG may precede FROM")
                name, _, default = instruction.value.partition("=")
                self.global_args[name] = self.build_args.get(name, _unquote(default))
            else:
                self.stages[-1].instructions.append(instruction)
        self._ignore = IgnoreRules.read(context)
        self._built: dict[str, Built] = {}

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ContainerfileError(f"no stage named {name!r} in {self.containerfile}")

    # -- keys ---------------------------------------------------------------------------------

    def _context_files(self, source: str) -> list[Path]:
        root = (self.context / source).resolve()
        if not root.is_relative_to(self.context.resolve()):
            raise ContainerfileError(f"COPY source {source!r} is outside the build context")
        if root.is_file() or root.is_symlink():
            candidates: Iterator[Path] = iter([root])
        elif root.is_dir():
            candidates = (p for p in sorted(root.rglob("*")) if not p.is_dir())
        else:
            raise ContainerfileError(f"COPY source {source!r} does not exist")
        files = [
            p
            for p in candidates
            if not self._ignore.excluded(p.relative_to(self.context.resolve()).as_posix())
        ]
        if not files:
            raise ContainerfileError(f"COPY source {source!r} is excluded by .containerignore")
        return files

    def _key(self, stage: Stage, base_key: str) -> str:
        digest = hashlib.sha256(f"{base_key}\n".encode())
        args = {**self.global_args}
        for instruction in stage.instructions:
            digest.update(f"{instruction.keyword} {instruction.value}\n".encode())
            if instruction.keyword == "ARG":
                name, _, default = instruction.value.partition("=")
                args[name] = self.build_args.get(name, _unquote(default) or args.get(name, ""))
                digest.update(f"= {args[name]}\n".encode())
            elif instruction.keyword == "COPY":
                flags, sources, _ = _copy_words(substitute(instruction.value, args))
                if "from" in flags:
                    digest.update(self._build(flags["from"]).key.encode())
                    continue
                for source in sources:
                    for path in self._context_files(source):
                        relative = path.relative_to(self.context.resolve()).as_posix()
                        digest.update(f"{relative} {path.stat().st_mode:o}\n".encode())
                        digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()[:20]

    # -- building -----------------------------------------------------------------------------

    def build(self, target: str) -> Built:
        """The target stage's root file system (in the cache: do not change it) and config."""
        return self._build(target)

    def _build(self, name: str) -> Built:
        if name in self._built:
            return self._built[name]
        stage = self.stage(name)
        base_name = substitute(stage.base, self.global_args)
        base_stage = next((s for s in self.stages[: stage.index] if s.name == base_name), None)
        if base_stage is not None:
            base = self._build(base_stage.name)
            base_rootfs, base_config, base_key = base.rootfs, base.config, base.key
        elif base_name in self.bases:
            base_rootfs, base_config, base_key = self.bases[base_name]()
        else:
            raise ContainerfileError(
                f"stage {stage.name}: the base image {base_name} cannot be pulled (no registry "
                f"here); known local bases: {', '.join(sorted(self.bases)) or 'none'}"
            )
        key = self._key(stage, base_key)
        folder = self.cache / f"{stage.name}-{key}"
        if (folder / "config.json").is_file():
            config = ImageConfig.from_json(json.loads((folder / "config.json").read_text()))
            built = Built(folder / "rootfs", config, key)
            self._built[name] = built
            return built
        self.cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{stage.name}-{key}-", dir=self.cache))
        started = time.monotonic()
        logger.info("building stage %s of %s", stage.name, self.containerfile.name)
        try:
            rootfs = work / "rootfs"
            _copy_tree(base_rootfs, rootfs)
            config = ImageConfig.from_json(base_config.to_json())
            state = _State(
                env=dict(config.env),
                args={},
                workdir=config.working_dir or "/",
                config=config,
                user=config.user,
            )
            for instruction in stage.instructions:
                self._apply(instruction, state, rootfs)
            state.config.env = state.env
            state.config.user = state.user
            (work / "config.json").write_text(json.dumps(state.config.to_json()))
            for stale in self.cache.glob(f"{stage.name}-*"):
                if stale.name.rsplit("-", 1)[0] == stage.name:
                    shutil.rmtree(stale, ignore_errors=True)
            work.rename(folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        logger.info("built stage %s in %.0f s", stage.name, time.monotonic() - started)
        built = Built(folder / "rootfs", state.config, key)
        self._built[name] = built
        return built

    def _apply(self, instruction: Instruction, state: _State, rootfs: Path) -> None:
        keyword = instruction.keyword
        scope = {**state.env, **state.args}
        if keyword == "ARG":
            name, sep, default = instruction.value.partition("=")
            value = self.build_args.get(name)
            if value is None:
                value = substitute(_unquote(default), scope) if sep else None
            if value is None:
                value = self.global_args.get(name, "")
            state.args[name] = value
        elif keyword == "ENV":
            for key, value in _pairs(substitute(instruction.value, scope)).items():
                state.env[key] = value
        elif keyword == "WORKDIR":
            path = substitute(instruction.value, scope)
            state.workdir = str(PurePosixPath(state.workdir) / path)
            state.config.working_dir = state.workdir
            (rootfs / state.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            self._copy(substitute(instruction.value, scope), state, rootfs)
        elif keyword == "RUN":
            self._run(instruction, state, rootfs)
        elif keyword == "LABEL":
            state.config.labels.update(_pairs(substitute(instruction.value, scope)))
        elif keyword == "USER":
            state.user = substitute(instruction.value, scope)
        elif keyword == "EXPOSE":
            state.config.exposed_ports += substitute(instruction.value, scope).split()
        elif keyword == "ENTRYPOINT":
            state.config.entrypoint = _exec_form(instruction.value)
            state.config.cmd = None
        elif keyword == "CMD":
            state.config.cmd = _exec_form(instruction.value)

    def _copy(self, value: str, state: _State, rootfs: Path) -> None:
        flags, sources, destination = _copy_words(value)
        unknown = set(flags) - {"from"}
        if unknown:
            raise ContainerfileError(f"COPY {value}: --{', --'.join(sorted(unknown))} unsupported")
        target = PurePosixPath(state.workdir) / destination
        into_folder = destination.endswith("/") or len(sources) > 1
        where = rootfs / str(target).lstrip("/")
        if "from" in flags:
            source_root = self._build(flags["from"]).rootfs
            for source in sources:
                path = source_root / source.lstrip("/")
                if path.is_dir() and not path.is_symlink():
                    _copy_tree(path, where)
                elif path.exists() or path.is_symlink():
                    final = where / path.name if into_folder else where
                    final.parent.mkdir(parents=True, exist_ok=True)
                    subprocess.run(["cp", "-a", str(path), str(final)], check=True)
                else:
                    raise ContainerfileError(f"COPY --from={flags['from']}: no {source}")
            return
        context = self.context.resolve()
        for source in sources:
            root = (context / source).resolve()
            for path in self._context_files(source):
                if root.is_dir():
                    final = where / path.relative_to(root)
                else:
                    final = where / path.name if into_folder else where
                for parent in reversed(final.relative_to(rootfs).parents):
                    folder = rootfs / parent
                    if not folder.exists():
                        folder.mkdir(mode=0o755)
                        os.chown(folder, 0, 0)
                shutil.copy2(path, final, follow_symlinks=False)
                os.chown(final, 0, 0, follow_symlinks=False)

    def _run(self, instruction: Instruction, state: _State, rootfs: Path) -> None:
        env = {"HOME": "/root", **state.env, **state.args}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        resolv = rootfs / "etc" / "resolv.conf"
        created = False
        if not resolv.exists() and not resolv.is_symlink():
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.touch()
            created = True
        elif resolv.is_symlink():
            raise ContainerfileError("the stage's /etc/resolv.conf is a symbolic link")
        # The host's CA bundle, over the stage's for this step only (a build secret: nothing of it
        # stays in the image), so apt and pip work behind a TLS-inspecting proxy.
        host_ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
        stage_ca = rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt"
        trust = ""
        if host_ca.is_file() and stage_ca.is_file() and not stage_ca.is_symlink():
            trust = (
                f"&& mount --bind {shlex.quote(str(host_ca))} "
                '"$root/etc/ssl/certs/ca-certificates.crt" '
            )
        chroot = ["chroot"]
        if state.user and state.user not in ("root", "0", "0:0"):
            chroot.append(f"--userspec={state.user}")
        # Private mount and process namespaces: whatever the step mounts or leaves running
        # goes away with it. The host's network, for apt and pip.
        script = (
            'root=$1; shift; mount -t proc proc "$root/proc" '
            '&& mount --rbind /dev "$root/dev" '
            '&& mount -t sysfs -o ro sysfs "$root/sys" '
            '&& mount --bind /etc/resolv.conf "$root/etc/resolv.conf" '
            f"{trust}"
            '&& exec "$@"'
        )
        argv = [
            "unshare",
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            str(rootfs),
            *chroot,
            str(rootfs),
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            "/bin/sh",
            "-c",
            'cd "$0" && exec /bin/sh -c "$1"',
            state.workdir,
            instruction.value,
        ]
        logger.info("RUN %s", instruction.value[:100])
        for folder in ("proc", "dev", "sys"):
            (rootfs / folder).mkdir(exist_ok=True)
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        finally:
            if created:
                resolv.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
            raise ContainerfileError(f"{instruction} failed ({result.returncode}):\n{tail}")


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _copy_words(value: str) -> tuple[dict[str, str], list[str], str]:
    words = shlex.split(value)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, flag_value = words.pop(0)[2:].partition("=")
        flags[name] = flag_value
    if len(words) < 2:
        raise ContainerfileError(f"COPY {value}: expected sources and a destination")
    return flags, words[:-1], words[-1]


def _copy_tree(source: Path, destination: Path) -> None:
    """Copy a folder's content with owners, modes, links and times (`cp -a`)."""
    destination.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{source}/.", f"{destination}/"], check=True)
