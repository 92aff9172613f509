"""Target specs: the string grammar, its parser, and the frozen dataclasses it produces.

Grammar::

    target := term (("+" | "-") term)*
    term   := [coef "*"] site [":" unit] ["/" reduce]  |  [coef "*"] [":"] "sae=" DIR "#" INT ["/" reduce]
    site   := dotted.module.path ["@in"] ["[" k "]"]  |  "logits"  |  "logprobs"
    unit   := INT | "dir=" FILE ["#" KEY] | "sae=" FILE "#" INT | "head=" INT ["," (INT | "norm" | "dir=" FILE ["#" KEY] | "key=" INT)]
    reduce := "mean" | "max" | "sum" | "center" | "cls" | "pos=" INT | "tokens=" INT

`cls` reads the class token and `tokens=N` patch token N of a vision transformer's `[B, tokens, D]` site (see
`Probe(patch_tokens=...)`). A site may be a TransformerLens hook name (`blocks.9.hook_resid_post`; see
`dreamy.targets.dialects`). `head=H,...` reads one attention head of a per-head site: `blocks.L.attn.hook_z:head=2,5`
(its feature 5), `:head=2,norm`, `:head=2,dir=v.pt`, or the pattern entry `blocks.L.attn.hook_pattern:head=2,key=0`
(the weight from each query position, the last by default, to key position 0). An SAE feature with no site (`sae=DIR#i`) reads the site its SAELens folder's cfg names
(its site is the empty `Site("")` until `dialects.complete_sites` fills it in). `str()` of a parsed target gives
back its canonical spec, and `parse(str(t)) == t`.

Example:
    >>> t = parse("0.5*layer3:1-layer4:2")
    >>> str(t)
    '0.5*layer3:1-layer4:2'
    >>> [str(term.site) for term in t.terms]
    ['layer3', 'layer4']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from dreamy.targets.errors import SpecError
from dreamy.targets.units import Direction, Head, Neuron, SAEFeature, Unit

REDUCTIONS = ("mean", "max", "sum", "center", "cls")
LOGITS = "logits"
LOGPROBS = "logprobs"  # the model's output after log-softmax over the vocabulary / classes

_WS = re.compile(r"\s*")
_COEF = re.compile(r"((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*")
_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_INDEX = re.compile(r"\[(\d+)\]")
_INT = re.compile(r"\d+")
_RANGE = re.compile(r"(\d+)-(\d+)(?=$|[\s/+,])")
_REDUCE = re.compile(r"/(mean|max|sum|center|cls|pos=-?\d+|tokens=-?\d+)(?=$|[\s+\-])")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_UNQUOTED_FILE = re.compile(r"[^\s#+]+")
_KEY = re.compile(r"[^\s+/]+")
_MAX_DIGITS = 18  # no index (unit, tuple element, SAE feature, position) on any model has more digits


@dataclass(frozen=True)
class Site:
    """Where in the model to read: a `named_modules()` path, its input (`@in`), a tuple element.

    Example:
        >>> str(Site("model.layers.5.mlp.down_proj", input=True))
        'model.layers.5.mlp.down_proj@in'
    """

    path: str
    input: bool = False
    index: int | None = None

    def __str__(self) -> str:
        text = self.path + ("@in" if self.input else "")
        return text if self.index is None else f"{text}[{self.index}]"

    @property
    def is_logits(self) -> bool:
        """True for the pseudo-sites `logits` and `logprobs` (the model's output, raw or log-softmaxed)."""
        return self.path in (LOGITS, LOGPROBS) and not self.input and self.index is None

    @property
    def is_logprobs(self) -> bool:
        """True for the pseudo-site `logprobs`: log-softmax of the output over its last dimension."""
        return self.is_logits and self.path == LOGPROBS


@dataclass(frozen=True)
class Term:
    """One weighted term of a target: `coef * reduce(unit(site))`.

    Example:
        >>> str(Term(2.0, Site("conv2"), Neuron(3), "max"))
        '2*conv2:3/max'
    """

    coef: float
    site: Site
    unit: Unit | None = None
    reduce: str | None = None

    def body(self) -> str:
        """The term without its coefficient."""
        text = str(self.site)
        if self.unit is not None:
            text += f":{self.unit}" if text else str(self.unit)  # `sae=DIR#i`: the SAE's own site
        if self.reduce is not None:
            text += f"/{self.reduce}"
        return text

    def __str__(self) -> str:
        return _format_coef(self.coef) + self.body()


def _format_coef(coef: float) -> str:
    magnitude = abs(coef)
    sign = "-" if coef < 0 else ""
    if magnitude == 1.0:
        return sign
    text = repr(float(magnitude))
    if text.endswith(".0"):
        text = text[:-2]
    return f"{sign}{text}*"


@dataclass(frozen=True)
class Target:
    """What to maximize: a weighted sum of terms. Frozen; `str()` gives the canonical spec.

    Example:
        >>> parse("logits:281").terms[0].unit
        Neuron(index=281)
    """

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        parts: list[str] = []
        for i, term in enumerate(self.terms):
            text = str(term)
            if i == 0:
                parts.append(text)
                continue
            # a file path before an operator needs spaces so that '-' is not read as part of it
            before = self.terms[i - 1].unit
            path_last = isinstance(before, (Direction, SAEFeature)) or (isinstance(before, Head) and isinstance(before.part, Direction))
            loose = path_last and self.terms[i - 1].reduce is None
            sep = " " if loose else ""
            if term.coef < 0:
                parts.append(f"{sep}-{sep}{text[1:]}")
            else:
                parts.append(f"{sep}+{sep}{text}")
        return "".join(parts)

    @property
    def sites(self) -> tuple[Site, ...]:
        """The distinct sites this target reads, in order of first use."""
        return tuple(dict.fromkeys(term.site for term in self.terms))

    @property
    def reads_logits(self) -> bool:
        """True when a term reads the model's output (no early exit possible)."""
        return any(site.is_logits for site in self.sites)

    @property
    def class_index(self) -> int | None:
        """The class this target dreams when it is one positive `logits:N` or `logprobs:N` term (a class
        dream: what judges judge, galleries label and show large); None for every other target.

        Example:
            >>> parse("logits:285").class_index, parse("-logits:3").class_index, parse("logits:1-logits:2").class_index
            (285, None, None)
        """
        if len(self.terms) != 1:
            return None
        term = self.terms[0]
        if not term.site.is_logits or not isinstance(term.unit, Neuron) or term.coef <= 0:
            return None
        return term.unit.index


class _Parser:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.pos = 0

    def fail(self, message: str, position: int | None = None) -> SpecError:
        return SpecError(message, self.spec, self.pos if position is None else position)

    def skip_ws(self) -> None:
        self.pos = _WS.match(self.spec, self.pos).end()

    def match(self, pattern: re.Pattern) -> re.Match | None:
        found = pattern.match(self.spec, self.pos)
        if found:
            self.pos = found.end()
        return found

    def peek(self, text: str) -> bool:
        return self.spec.startswith(text, self.pos)

    def integer(self, text: str, position: int) -> int:
        """`int(text)` for an index read at `position`; an absurdly long one is a SpecError, not a ValueError."""
        if len(text.lstrip("-")) > _MAX_DIGITS:
            shown = text if len(text) <= 24 else text[:20] + "..."
            raise self.fail(f"index '{shown}' is too large (at most {_MAX_DIGITS} digits)", position)
        return int(text)

    def target(self, allow_range: bool) -> tuple[Target, tuple[int, int] | None]:
        self.skip_ws()
        if self.pos >= len(self.spec):
            raise self.fail("empty target spec; expected e.g. 'layer4.1:87' or 'logits:281'")
        terms: list[Term] = []
        sign = 1.0
        if self.peek("-") or self.peek("+"):
            sign = -1.0 if self.peek("-") else 1.0
            self.pos += 1
            self.skip_ws()
        unit_range = None
        while True:
            term, term_range = self.term(sign, allow_range)
            unit_range = unit_range or term_range
            terms.append(term)
            self.skip_ws()
            if self.pos >= len(self.spec):
                break
            if not (self.peek("+") or self.peek("-")):
                raise self.fail(f"unexpected '{self.spec[self.pos]}'; terms are joined with '+' or '-'")
            sign = -1.0 if self.peek("-") else 1.0
            self.pos += 1
            self.skip_ws()
            if self.pos >= len(self.spec):
                raise self.fail("expected a term after the operator")
        if unit_range is not None and len(terms) > 1:
            raise self.fail("a unit range like 'layer:0-63' works only in a single-term spec", 0)
        return Target(tuple(terms)), unit_range

    def term(self, sign: float, allow_range: bool) -> tuple[Term, tuple[int, int] | None]:
        coef = 1.0
        start = self.pos
        found = self.match(_COEF)
        if found:
            coef = float(found.group(1))
            if not math.isfinite(coef):  # '1e999' overflows to inf, which no spec can print back
                raise self.fail(f"coefficient '{found.group(1)}' is too large for a float; use a smaller weight", start)
        unit: Unit | None = None
        unit_range = None
        if self.peek("sae=") or self.peek(":sae="):  # no site: the one the SAE folder's cfg names
            self.pos += 1 if self.peek(":") else 0
            site = Site("")
            unit, unit_range = self.unit(allow_range)
        else:
            site = self.site()
            if self.peek(":"):
                self.pos += 1
                unit, unit_range = self.unit(allow_range)
        reduce = None
        reduce_at = self.pos
        found = self.match(_REDUCE)
        if found:
            reduce = found.group(1)
            if "=" in reduce:  # canonical: 'pos=007' and 'tokens=-0' are 'pos=7' and 'tokens=0'
                key, _, number = reduce.partition("=")
                reduce = f"{key}={self.integer(number, reduce_at + len(key) + 2)}"
        elif self.peek("/"):
            raise self.fail(f"unknown reduction; use one of {', '.join(REDUCTIONS)}, pos=N or tokens=N")
        return Term(sign * coef, site, unit, reduce), unit_range

    def site(self) -> Site:
        start = self.pos
        found = self.match(_PATH)
        if not found:
            raise self.fail("expected a site name (a dotted module path such as 'layer4.1', or 'logits')")
        is_input = False
        if self.peek("@"):
            if not self.spec.startswith("@in", self.pos):
                raise self.fail("unknown site modifier; the only one is '@in' (the module's input)")
            self.pos += 3
            is_input = True
        index = None
        found_index = self.match(_INDEX)
        if found_index:
            index = self.integer(found_index.group(1), found_index.start(1))
        elif self.peek("["):
            raise self.fail("expected a tuple index like '[0]'")
        path = self.spec[start : start + len(found.group(0))]
        return Site(path, is_input, index)

    def unit_range(self, allow_range: bool) -> tuple[int, int] | None:
        """A `LOW-HIGH` range of units (neurons, or SAE features after '#') at the current position, if any."""
        start = self.pos
        found = _RANGE.match(self.spec, self.pos)
        if not found or re.match(r"\s*[*:.@\[]", self.spec[found.end() :]):
            return None
        if not allow_range:
            raise self.fail("a unit range expands to many targets; use dreamy.targets.expand() or the CLI", start)
        low, high = self.integer(found.group(1), found.start(1)), self.integer(found.group(2), found.start(2))
        if high < low:
            raise self.fail(f"empty unit range {low}-{high}; write low-high with low <= high", start)
        self.pos = found.end()
        return low, high

    def head(self, allow_range: bool) -> tuple[Unit, tuple[int, int] | None]:
        """`head=H[,PART]` at the current position (after `head=`)."""
        heads = self.unit_range(allow_range)
        if heads is None:
            found = self.match(_INT)
            if not found:
                raise self.fail("expected a head index after 'head=' (e.g. 'head=2,norm')")
            index = self.integer(found.group(0), found.start())
        else:
            index = heads[0]
        part: "Neuron | Direction | str | None" = None
        key = None
        if self.peek(","):
            self.pos += 1
            if self.peek("norm"):
                self.pos += 4
                part = "norm"
            elif self.peek("key="):
                self.pos += 4
                found = self.match(re.compile(r"-?\d+"))
                if not found:
                    raise self.fail("expected a key position after 'key=' (e.g. 'key=0', or 'key=-1' for the last)")
                key = self.integer(found.group(0), found.start())
            elif self.peek("dir="):
                part, _ = self.unit(False)
            else:
                found = self.match(_INT)
                if not found:
                    raise self.fail("expected what of the head after ',': a feature index, 'norm', 'dir=FILE' or 'key=J'")
                part = Neuron(self.integer(found.group(0), found.start()))
        return Head(index, part, key), heads

    def unit(self, allow_range: bool) -> tuple[Unit, tuple[int, int] | None]:
        if self.peek("head="):
            self.pos += 5
            return self.head(allow_range)
        neurons = self.unit_range(allow_range)
        if neurons is not None:
            return Neuron(neurons[0]), neurons
        if self.peek("dir=") or self.peek("sae="):
            kind = self.spec[self.pos : self.pos + 3]
            self.pos += 4
            path = self.file_path()
            key = None
            if self.peek("#"):
                self.pos += 1
                if kind == "sae":
                    features = self.unit_range(allow_range)
                    if features is not None:
                        return SAEFeature(path, features[0]), features
                found_key = self.match(_INT if kind == "sae" else _KEY)
                if not found_key:
                    raise self.fail("expected a key after '#'" + (" (an SAE feature index)" if kind == "sae" else ""))
                key = found_key.group(0)
            if kind == "dir":
                return Direction(path, key), None
            if key is None:
                raise self.fail("an SAE unit needs a feature index: 'sae=FILE#INDEX'")
            return SAEFeature(path, self.integer(key, self.pos - len(key))), None
        found = self.match(_INT)
        if found:
            return Neuron(self.integer(found.group(0), found.start())), None
        raise self.fail("expected a unit: an integer, 'dir=FILE[#KEY]', 'sae=FILE#INDEX' or 'head=H[,PART]'")

    def file_path(self) -> str:
        quoted = self.match(_QUOTED)
        if quoted:
            return quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
        found = _UNQUOTED_FILE.match(self.spec, self.pos)
        if not found:
            raise self.fail("expected a file path")
        text = found.group(0)
        suffix = _REDUCE.search(text)  # an unquoted path ends at the first '/REDUCE' (before '-' or the end)
        if suffix:
            text = text[: suffix.start()]
        if "'" in text and '"' in text:  # no quoting could print it back
            raise self.fail("a file path cannot hold both ' and \"; rename the file")
        self.pos += len(text)
        return text


def parse(spec: "str | Target") -> Target:
    """Parse a spec string into a `Target` (a `Target` passes through).

    Raises `SpecError` (a `ValueError`) showing the position of a malformed spec.

    Example:
        >>> str(parse("model.layers.5.mlp.down_proj@in:1234/pos=-1"))
        'model.layers.5.mlp.down_proj@in:1234/pos=-1'
    """
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a target spec must be a string, got {type(spec).__name__}: {spec!r}")
    target, _ = _Parser(spec).target(allow_range=False)
    return target


def class_index(spec: "str | Target") -> int | None:
    """The class a target dreams when it is one positive `logits:N` / `logprobs:N` term (see `Target.class_index`).

    Example:
        >>> class_index("logits:285"), class_index("_blocks.8:12")
        (285, None)
    """
    return parse(spec).class_index


_ALL_FEATURES = re.compile(r"(sae=(?:'[^']*'|\"[^\"]*\"|[^\s#+]+))#all(?=$|[\s/+,])")


def _sae_width(path: str) -> int:
    """The number of features (`d_sae`) of the SAE at `path`: its folder's cfg.json, else its weights' `b_enc`."""
    import json
    from pathlib import Path

    from dreamy.targets.saelens import CFG_NAME, is_sae_folder

    if is_sae_folder(path):
        try:
            d_sae = json.loads((Path(path).expanduser() / CFG_NAME).read_text()).get("d_sae")
        except (OSError, ValueError, AttributeError):
            d_sae = None
        if isinstance(d_sae, int) and not isinstance(d_sae, bool) and d_sae > 0:
            return d_sae
    from dreamy.targets.units import _sae_weights

    return int(_sae_weights(path).b_enc.shape[0])


def expand(spec: "str | Target") -> list[Target]:
    """Expand a unit range (`layer4.1:0-63`, or SAE features `blocks.6:sae=sae-l6#0-31`) into one target per
    unit; `sae=DIR#all` (with or without a site) is every feature of that SAE (`d_sae` read from its cfg.json or
    its weights, no model loaded); other specs give one target.

    Example:
        >>> [str(t) for t in expand("conv2:0-2")], [str(t) for t in expand("l9:sae=sae-l9#3-4")]
        (['conv2:0', 'conv2:1', 'conv2:2'], ["l9:sae='sae-l9'#3", "l9:sae='sae-l9'#4"])
    """
    if isinstance(spec, Target):
        return [spec]
    every = isinstance(spec, str) and _ALL_FEATURES.search(spec) is not None
    if every:  # parsed as the range 0-0 to find the SAE's path, then widened to its d_sae features
        spec = _ALL_FEATURES.sub(r"\1#0-0", spec, count=1)
    target, unit_range = _Parser(spec).target(allow_range=True)
    if unit_range is None:
        return [target]
    low, high = unit_range
    unit = target.terms[0].unit
    if every and isinstance(unit, SAEFeature):
        low, high = 0, _sae_width(unit.path) - 1
    term = target.terms[0]
    return [Target((replace(term, unit=replace(term.unit, index=i)),)) for i in range(low, high + 1)]
