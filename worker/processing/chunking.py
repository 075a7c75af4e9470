"""Long texts: split into overlapping chunks that fit the guard's window, and fold their verdicts into one.

Pure code, no I/O. Sizes are in characters (Python ``str`` code points, so a surrogate pair is never cut).
The budget ``max_chars`` covers everything one guard call sends: for ``kind=response``, prompt + chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from worker.config.values import MIN_CHUNK_CHARS as SETTINGS_MIN_CHUNK_CHARS
from worker.core.guard_types import GuardRequest, GuardVerdict, Kind, Label
from worker.core.messages import content_digest

# The guard instructions of Qwen3Guard's chat template plus the reply's max_tokens (128): ~400 tokens,
# rounded up so the estimate stays on the safe side.
OVERHEAD_TOKENS: Final = 512
# Latin-script text averages ~4 chars per token; 2 is conservative for it and for code. Dense scripts (CJK,
# ~1-1.5 chars/token) may still overflow: the 400 is cheap and `smaller` halves the size once or twice.
# Assuming 1 char/token for everything would cut every ordinary long text into twice the calls.
CHARS_PER_TOKEN: Final = 2
# Below this a chunk carries too little context to be judged fairly: dead-letter as context_length.
MIN_CHUNK_CHARS: Final = SETTINGS_MIN_CHUNK_CHARS
# Overlap: an eighth of the chunk, at most this many characters (a phrase up to this long is seen whole).
MAX_OVERLAP_CHARS: Final = 2048
# How far back from a hard boundary a cut may move to land after white space, as a fraction of the step.
_CUT_SLACK_DIVISOR: Final = 4

_SEVERITY: Final[dict[Label, int]] = {"safe": 0, "controversial": 1, "unsafe": 2}


def chunk_chars_for(max_model_len: int | None, *, default_chars: int) -> int:
    """The chars budget per guard call for a window of ``max_model_len`` tokens; ``default_chars`` if unknown.

    (max_model_len - OVERHEAD_TOKENS) * CHARS_PER_TOKEN, never below MIN_CHUNK_CHARS.
    """
    if max_model_len is None:
        if default_chars < 1:
            raise ValueError("default_chars must be at least 1")
        return default_chars
    if max_model_len < 1:
        raise ValueError("max_model_len must be at least 1")
    return max(MIN_CHUNK_CHARS, (max_model_len - OVERHEAD_TOKENS) * CHARS_PER_TOKEN)


def smaller(max_chars: int) -> int | None:
    """The budget to try after a context-length 400: half, or None once that is below MIN_CHUNK_CHARS."""
    half = max_chars // 2
    return half if half >= MIN_CHUNK_CHARS else None


def overlap_for(max_chars: int) -> int:
    """A default overlap for a budget: max_chars // 8, at most MAX_OVERLAP_CHARS (always < max_chars)."""
    return min(max_chars // 8, MAX_OVERLAP_CHARS)


def _cut(text: str, start: int, end: int, overlap_chars: int) -> int:
    """Where the chunk ``text[start:end]`` should end: just after white space near ``end`` if there is some."""
    # The cut must stay beyond start + overlap so that the next chunk starts later than this one.
    slack = (end - start - overlap_chars) // _CUT_SLACK_DIVISOR
    for cut in range(end, end - slack, -1):
        if text[cut - 1].isspace():
            return cut
    return end


def split_text(text: str, *, max_chars: int, overlap_chars: int) -> list[str]:
    """``text`` in chunks of at most ``max_chars``, each starting ``overlap_chars`` before the previous end.

    Any stretch of at most ``overlap_chars + 1`` characters lies whole in one chunk. A text that fits is
    returned as ``[text]``; no chunk is empty; joining chunk[0] with chunk[i][overlap_chars:] gives ``text``.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if not 0 <= overlap_chars < max_chars:
        raise ValueError("overlap_chars must be >= 0 and < max_chars")
    if len(text) <= max_chars:
        return [text]
    chunks: list[str] = []
    start = 0
    # Each pass moves start forward by at least 1 (the cut is > start + overlap), so this ends.
    while start + max_chars < len(text):
        end = _cut(text, start, start + max_chars, overlap_chars)
        chunks.append(text[start:end])
        start = end - overlap_chars
    chunks.append(text[start:])
    return chunks


def requests_for(request: GuardRequest, max_chars: int, overlap: int) -> list[GuardRequest]:
    """The guard requests that moderate ``request`` within ``max_chars`` each; ``[request]`` if it fits.

    A response's chunks each carry the prompt, cut to its last ``max_chars // 4`` characters when longer,
    and are sized so that prompt + chunk <= max_chars. ``overlap`` is capped at half the chunk size.
    """
    if not 0 <= overlap < max_chars:
        raise ValueError("overlap must be >= 0 and < max_chars")
    if request.kind == "prompt":
        chunks = split_text(request.text, max_chars=max_chars, overlap_chars=overlap)
        if len(chunks) == 1:
            return [request]
        return [GuardRequest(text=chunk, kind="prompt", prompt=request.prompt) for chunk in chunks]
    prompt_chars = len(request.prompt or "")
    if prompt_chars + len(request.text) <= max_chars:
        return [request]
    # The end of the user turn is what the answer replies to, so it is the part worth keeping.
    kept_prompt = request.prompt
    if kept_prompt is not None and prompt_chars > max_chars // 4:
        kept_prompt = kept_prompt[prompt_chars - max_chars // 4 :]
    budget = max_chars - len(kept_prompt or "")
    chunks = split_text(request.text, max_chars=budget, overlap_chars=min(overlap, budget // 2))
    return [GuardRequest(text=chunk, kind="response", prompt=kept_prompt) for chunk in chunks]


def aggregate(verdicts: Sequence[GuardVerdict], kind: Kind) -> GuardVerdict:
    """One verdict for a chunked text: the worst label, categories united in first-seen order.

    ``refusal`` is the last chunk's for a response (the answer's end is where it refuses or not), None
    for a prompt. ``model`` is the first chunk's.
    """
    if not verdicts:
        raise ValueError("aggregate needs at least one verdict")
    label = max((verdict.label for verdict in verdicts), key=_SEVERITY.__getitem__)
    categories = tuple(dict.fromkeys(name for verdict in verdicts for name in verdict.categories))
    refusal = verdicts[-1].refusal if kind == "response" else None
    return GuardVerdict(label=label, categories=categories, refusal=refusal, model=verdicts[0].model)


def chunk_digest(model: str, part: GuardRequest) -> str:
    """The key of one chunk's verdict: a hash of the model and exactly what it judged, so a verdict is
    reused only for the same content by the same model (another budget cuts other chunks, which miss)."""
    return content_digest(model, part.kind, part.prompt, part.text)
