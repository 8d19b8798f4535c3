"""A built-in corpus of simple children's stories from a small probabilistic grammar, and its checker.

Stories follow a small plot arc: an opening that introduces a character, a place and a liking, an outing, a
problem with an object, help from a friend, a resolution and an ending. Every sentence comes from one of the
templates below, filled from word lists, so the checker can tell which sentences the grammar can produce
(`grammatical_rate`), which whole stories it can produce (`story_rate`: the stages in order, one value per slot,
a friend other than the main character, the name's pronouns) and which samples repeat a training story exactly
(`copy_rate`).
generate_stories(n, seed) is deterministic for a seed and unlimited in n.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

# Word lists (slot name -> choices). Names carry their pronouns.
NAMES = {
  "Lily": "she",
  "Mia": "she",
  "Anna": "she",
  "Lucy": "she",
  "Sue": "she",
  "Emma": "she",
  "Tom": "he",
  "Ben": "he",
  "Sam": "he",
  "Max": "he",
  "Tim": "he",
  "Jack": "he",
}
SLOTS = {
  "kind": ["girl", "boy", "cat", "dog", "bunny", "bird", "bear", "duck"],
  "adj": ["little", "big", "kind", "happy", "shy", "brave", "funny", "small"],
  "place": ["park", "garden", "forest", "beach", "farm", "yard", "village", "meadow"],
  "action": ["play", "run", "jump", "sing", "dance", "read", "paint", "swim"],
  "object": ["ball", "kite", "box", "hat", "book", "boat", "flower", "cake", "drum", "toy"],
  "color": ["red", "blue", "green", "yellow", "shiny", "soft", "old", "new"],
  "problem": ["stuck in a tree", "lost in the grass", "broken", "too high to reach", "under the water", "very dirty"],
  "bad_feeling": ["sad", "scared", "worried", "upset"],
  "good_feeling": ["happy", "glad", "proud", "excited"],
  "fix": ["got the {object} back", "fixed the {object}", "found the {object}", "cleaned the {object}"],
  "time": ["One day", "One sunny morning", "After lunch", "One evening"],
}

# Sentence templates by plot stage. {name}/{friend} are names, {pron}/{Pron} the main character's pronoun.
STAGES = [
  [
    "Once upon a time, there was a {adj} {kind} named {name}.",
    "Once upon a time, a {adj} {kind} named {name} lived near a {place}.",
  ],
  ["{Pron} liked to {action} every day.", "{Pron} loved to {action} with friends.", "{Pron} had a {color} {object}."],
  ["{time}, {name} went to the {place}.", "{time}, {name} and {pron2} mom walked to the {place}."],
  ["{Pron} saw a {color} {object}.", "There {pron} found a {color} {object}."],
  ["But the {object} was {problem}.", "Then the {object} was {problem}."],
  ["{name} felt {bad_feeling}.", "{name} was very {bad_feeling}."],
  ["A {adj} {kind} named {friend} came to help.", "{name} asked {friend} the {kind} for help."],
  ["Together they {fix}.", "{friend} helped, and they {fix}."],
  ["{name} was {good_feeling} again.", "{name} smiled and felt {good_feeling}."],
  [
    "From that day on, {name} and {friend} were best friends.",
    "They played together until the sun went down.",
    "{name} said thank you to {friend}.",
  ],
]
POSSESSIVE = {"she": "her", "he": "his"}


def _fill(template: str, slots: dict[str, str]) -> str:
  text = template.format(**slots)
  return text.format(**slots)  # "fix" choices hold an {object} slot themselves.


def generate_story(rng: np.random.Generator) -> str:
  names = list(NAMES)
  name = names[rng.integers(len(names))]
  friend = names[rng.integers(len(names))]
  while friend == name:
    friend = names[rng.integers(len(names))]
  slots = {k: v[rng.integers(len(v))] for k, v in SLOTS.items()}
  pron = NAMES[name]
  slots.update(name=name, friend=friend, pron=pron, Pron=pron.capitalize(), pron2=POSSESSIVE[pron])
  sentences = []
  for stage, templates in enumerate(STAGES):
    if stage == 1 and rng.random() < 0.3:
      continue  # Optional detail: stories vary in length.
    sentences.append(_fill(templates[rng.integers(len(templates))], slots))
  return " ".join(sentences)


def generate_stories(n: int, seed: int = 0) -> list[str]:
  """n stories; story i depends only on (seed, i), so any prefix of a larger corpus is the same."""
  if n <= 0:
    raise ValueError(f"data.synthetic_docs={n}: the synthetic source needs a positive number of stories")
  return [generate_story(np.random.default_rng([seed, i])) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# The checker.
# ------------------------------------------------------------------------------------------------


def _alternation(choices: Iterable[str]) -> str:
  return "(?:" + "|".join(re.escape(c) for c in sorted(set(choices), key=len, reverse=True)) + ")"


def _slot_patterns() -> dict[str, str]:
  """{slot: the regular expression of its choices}; the fix ("got the {object} back") holds an object."""
  objects = _alternation(SLOTS["object"])
  slot_re = {k: _alternation(v) for k, v in SLOTS.items() if k != "fix"}
  slot_re["fix"] = "(?:" + "|".join(re.escape(f).replace(re.escape("{object}"), objects) for f in SLOTS["fix"]) + ")"
  slot_re.update(
    name=_alternation(NAMES), friend=_alternation(NAMES), pron="(?:she|he)", Pron="(?:She|He)", pron2="(?:her|his)"
  )
  return slot_re


def _sentence_patterns() -> re.Pattern:
  slot_re = _slot_patterns()
  alts = []
  for templates in STAGES:
    for t in templates:
      parts = re.split(r"(\{\w+\})", t)
      alts.append("".join(slot_re[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts))
  return re.compile("(?:" + "|".join(alts) + ")")


_PATTERN = None


def split_sentences(text: str) -> list[str]:
  """Sentences ending in . ! or ?; trailing text without one counts as a (fragment) sentence too."""
  return [s.strip() for s in re.findall(r"[^.!?]+(?:[.!?]|$)", text) if s.strip()]


def grammatical_rate(text: str) -> float:
  """Share of the text's sentences that the grammar can produce (0 for a text with no sentence)."""
  global _PATTERN
  if _PATTERN is None:
    _PATTERN = _sentence_patterns()
  sentences = split_sentences(text)
  if not sentences:
    return 0.0
  return sum(bool(_PATTERN.fullmatch(s)) for s in sentences) / len(sentences)


_STAGE_PATTERNS = None


def _stage_patterns() -> list[list[re.Pattern]]:
  """Per stage, one pattern per template with a named group per slot; a slot said twice in a template must repeat
  its value (a backreference), as the grammar fills it once. The fix ("got the {object} back") is one group."""
  slot_re = _slot_patterns()
  stages = []
  for templates in STAGES:
    patterns = []
    for t in templates:
      body, seen = [], set()
      for p in re.split(r"(\{\w+\})", t):
        if not p.startswith("{"):
          body.append(re.escape(p))
          continue
        slot = p[1:-1]
        body.append(f"(?P={slot})" if slot in seen else f"(?P<{slot}>{slot_re[slot]})")
        seen.add(slot)
      patterns.append(re.compile("".join(body)))
    stages.append(patterns)
  return stages


def story_parse(text: str) -> dict[str, str] | None:
  """The grammar's slot values of a whole story, or None when the grammar cannot produce the text: each sentence
  from its stage's templates with the stages in order (the second may be left out), every slot one value
  throughout, the friend not the main character, and the main character's pronouns those of the name."""
  global _STAGE_PATTERNS
  if _STAGE_PATTERNS is None:
    _STAGE_PATTERNS = _stage_patterns()
  sentences = split_sentences(text)
  stages = [0] + list(range(2, len(STAGES))) if len(sentences) == len(STAGES) - 1 else list(range(len(STAGES)))
  if len(sentences) != len(stages):
    return None
  values: dict[str, str] = {}
  for sentence, stage in zip(sentences, stages):
    m = next((m for p in _STAGE_PATTERNS[stage] if (m := p.fullmatch(sentence))), None)
    if m is None:
      return None
    found = m.groupdict()
    if "fix" in found:  # The fix's object is the story's object.
      fix = found.pop("fix")
      found["object"] = next(o for o in SLOTS["object"] if re.search(rf"\b{o}\b", fix))
    for slot, value in found.items():
      if values.setdefault(slot, value) != value:
        return None
  if values.get("friend") == values["name"]:
    return None
  pron = NAMES[values["name"]]
  want = {"pron": pron, "Pron": pron.capitalize(), "pron2": POSSESSIVE[pron]}
  if any(values.get(k, v) != v for k, v in want.items()):
    return None
  return values


def story_rate(samples: Sequence[str]) -> float:
  """Share of the samples that the grammar can produce as whole stories (story_parse): stricter than
  grammatical_rate, which checks each sentence alone ("Lucy asked Lucy the dog for help." is a grammatical
  sentence; the grammar never makes the friend the main character)."""
  return sum(story_parse(t) is not None for t in samples) / len(samples) if samples else 0.0


def copy_rate(samples: Sequence[str], training: Iterable[str]) -> float:
  """Share of samples that are exactly (up to surrounding whitespace) a training story."""
  seen = {t.strip() for t in training}
  return sum(s.strip() in seen for s in samples) / len(samples) if samples else 0.0


# ------------------------------------------------------------------------------------------------
# Coverage: which of the grammar's choices a set of stories makes.
# ------------------------------------------------------------------------------------------------

COVERAGE_SLOTS = (
  "name",
  "friend",
  "kind",
  "adj",
  "place",
  "action",
  "object",
  "color",
  "problem",
  "bad_feeling",
  "good_feeling",
  "time",
)
NONE = "(none)"  # The slot never appears in a grammatical sentence of the story.


def story_choices(text: str) -> dict[str, str]:
  """{slot: value} of COVERAGE_SLOTS, each from the first grammatical sentence that holds it (else NONE)."""
  global _STAGE_PATTERNS
  if _STAGE_PATTERNS is None:
    _STAGE_PATTERNS = _stage_patterns()
  found = {}
  for sentence in split_sentences(text):
    for pattern in (p for stage in _STAGE_PATTERNS for p in stage):
      m = pattern.fullmatch(sentence)
      if m:
        for slot, value in m.groupdict().items():
          found.setdefault(slot, value)
        break
  return {slot: found.get(slot, NONE) for slot in COVERAGE_SLOTS}


def coverage_tv_by_slot(samples: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
  """{slot: the total-variation distance between the samples' and the reference's distributions of that slot's
  value} over COVERAGE_SLOTS (NONE included: a story that never says where it is counts as such). 0 when both
  sets choose alike; 1 when they never agree. Two draws of the grammar differ by sampling noise."""
  if not samples or not reference:
    raise ValueError("coverage_tv needs samples and reference stories")
  a = [story_choices(t) for t in samples]
  b = [story_choices(t) for t in reference]
  tvs = {}
  for slot in COVERAGE_SLOTS:
    values = {c[slot] for c in a} | {c[slot] for c in b}
    pa = {v: sum(c[slot] == v for c in a) / len(a) for v in values}
    pb = {v: sum(c[slot] == v for c in b) / len(b) for v in values}
    tvs[slot] = float(0.5 * sum(abs(pa[v] - pb[v]) for v in values))
  return tvs


def coverage_tv(samples: Sequence[str], reference: Sequence[str]) -> float:
  """The mean over COVERAGE_SLOTS of coverage_tv_by_slot: how far the samples' choices (character, name, place,
  object, feelings, ...) are spread from the reference's."""
  return float(np.mean(list(coverage_tv_by_slot(samples, reference).values())))
