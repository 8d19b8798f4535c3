"""The synthetic story grammar and its checker."""

import re

import numpy as np
import pytest

from driftjax.data import synthetic


def test_deterministic_prefix_stable_and_varied():
  a = synthetic.generate_stories(500, seed=3)
  assert synthetic.generate_stories(20, seed=3) == a[:20]  # Story i depends only on (seed, i).
  assert synthetic.generate_stories(20, seed=4) != a[:20]
  assert len(set(a)) == 500  # Unlimited in practice: no repeats in hundreds of stories.
  assert all(s.startswith("Once upon a time") for s in a)


def test_every_generated_sentence_is_grammatical():
  for story in synthetic.generate_stories(300, seed=0):
    assert synthetic.grammatical_rate(story) == 1.0, story


def test_checker_rejects_what_the_grammar_cannot_produce():
  text = "Once upon a time, there was a big dog named Tom. The cat ate the moon. Tom felt sad."
  assert synthetic.grammatical_rate(text) == pytest.approx(2 / 3)
  assert synthetic.grammatical_rate("dog named Tom was.") == 0.0
  assert synthetic.grammatical_rate("") == 0.0
  story = synthetic.generate_stories(1)[0]
  assert synthetic.grammatical_rate(story + " Tom Tom Tom") < 1.0  # A trailing fragment counts.
  # Slots must agree with the grammar's word lists.
  assert synthetic.grammatical_rate("Once upon a time, there was a big dragon named Tom.") == 0.0


def test_every_generated_story_parses_whole_with_its_own_slots():
  stories = synthetic.generate_stories(300, seed=1)
  assert synthetic.story_rate(stories) == 1.0
  short = [s for s in stories if len(synthetic.split_sentences(s)) == len(synthetic.STAGES) - 1]
  assert 0 < len(short) < len(stories)  # Both lengths (the optional second sentence) parse.
  rng = np.random.default_rng([1, 0])  # Story 0's own draws: its parse reads them back.
  name = list(synthetic.NAMES)[rng.integers(len(synthetic.NAMES))]
  assert synthetic.story_parse(stories[0])["name"] == name


def _story(**slots):
  """A whole story of the grammar with its longer form's templates (every stage), slots given by hand."""
  s = dict(adj="big", kind="dog", name="Tom", place="park", color="red", object="ball", problem="broken")
  s.update(bad="sad", friend="Max", fix="found the ball", good="happy", Pron="He", pron2="his", obj2=None)
  s.update(slots)
  obj2 = s["obj2"] or s["object"]
  return (
    f"Once upon a time, there was a {s['adj']} {s['kind']} named {s['name']}. {s['Pron']} had a {s['color']} "
    f"{s['object']}. One day, {s['name']} and {s['pron2']} mom walked to the {s['place']}. {s['Pron']} saw a "
    f"{s['color']} {obj2}. Then the {obj2} was {s['problem']}. {s['name']} felt {s['bad']}. A {s['adj']} "
    f"{s['kind']} named {s['friend']} came to help. Together they {s['fix']}. {s['name']} was {s['good']} again. "
    f"{s['name']} said thank you to {s['friend']}."
  )


@pytest.mark.parametrize(
  "slots, why",
  [
    ({}, None),
    ({"friend": "Tom"}, "the friend is the main character"),
    ({"obj2": "kite", "fix": "found the kite"}, "the object changes after its first sentence"),
    ({"fix": "found the kite"}, "the fix's object is another one"),
    ({"Pron": "She"}, "Tom's pronoun is he"),
    ({"pron2": "her"}, "Tom's possessive is his"),
  ],
)
def test_story_parse_rejects_stories_whose_sentences_disagree(slots, why):
  text = _story(**slots)
  assert synthetic.grammatical_rate(text) == 1.0  # Every sentence alone is the grammar's.
  assert (synthetic.story_parse(text) is None) == (why is not None), why


def test_story_parse_needs_the_stages_in_order_each_once():
  sentences = synthetic.split_sentences(_story())
  assert synthetic.story_parse(" ".join(sentences)) is not None
  assert synthetic.story_parse(" ".join(sentences[1:])) is None  # No opening.
  assert synthetic.story_parse(" ".join(sentences[:2] + sentences[3:])) is None  # A later stage left out.
  swapped = sentences[:4] + [sentences[5], sentences[4]] + sentences[6:]
  assert synthetic.story_parse(" ".join(swapped)) is None
  assert synthetic.story_parse(" ".join(sentences + sentences[-1:])) is None  # The ending twice.
  assert synthetic.story_parse(" ".join(sentences) + " Tom") is None  # A trailing fragment.
  assert synthetic.story_rate([_story(), _story(friend="Tom")]) == 0.5 and synthetic.story_rate([]) == 0.0


def test_copy_rate():
  train = synthetic.generate_stories(50, seed=0)
  assert synthetic.copy_rate([train[3], " " + train[7] + " ", "new story."], train) == pytest.approx(2 / 3)
  assert synthetic.copy_rate([], train) == 0.0


def test_bad_count_is_an_error():
  with pytest.raises(ValueError, match="synthetic_docs=0"):
    synthetic.generate_stories(0)


def test_eval_reports_grammar_metrics_for_the_synthetic_corpus():
  from flax import nnx
  from configs import default
  from driftjax import evaluate
  from driftjax.data import pipeline
  from driftjax.data import tokenizer as tok_lib
  from driftjax.models import gpt2

  config = default.get_config()
  config.data.source = "synthetic"
  config.data.synthetic_docs = 40
  config.eval.bleu_samples = 4
  tok = tok_lib.load_tokenizer("gpt2")
  lm = gpt2.GPT2(gpt2.GPT2Config(n_positions=256, n_embd=16, n_layer=1, n_head=2), rngs=nnx.Rngs(0))
  stories = pipeline.load_documents("synthetic", synthetic_docs=40)
  training = [tok.encode(s) for s in stories[:4]]
  result = evaluate.score(training, tok, lm, tok, config)
  assert result["grammatical_rate"] == 1.0 and result["copy_rate"] == 1.0 and result["story_rate"] == 1.0
  mangled = [tok.encode(s.replace("Once upon a time", "Twice upon a rhyme")) for s in stories[:4]]
  result = evaluate.score(mangled, tok, lm, tok, config)
  assert result["copy_rate"] == 0.0 and 0.5 < result["grammatical_rate"] < 1.0 and result["story_rate"] == 0.0


def test_story_choices_read_back_the_grammar_slots():
  story = synthetic.generate_stories(1, seed=3)[0]
  choices = synthetic.story_choices(story)
  assert set(choices) == set(synthetic.COVERAGE_SLOTS)
  assert all(v != synthetic.NONE for k, v in choices.items() if k != "action")  # Stage 1 is optional.
  assert choices["name"] in story and f" {choices['place']}" in story
  assert synthetic.story_choices("Words that are no story.") == {k: synthetic.NONE for k in synthetic.COVERAGE_SLOTS}


def test_coverage_tv():
  a, b = synthetic.generate_stories(1000, seed=0), synthetic.generate_stories(1000, seed=1)
  assert synthetic.coverage_tv(a[:50], a[:50]) == 0.0
  assert synthetic.coverage_tv(a, b) < 0.06  # Two draws of 1,000: only sampling noise.
  assert synthetic.coverage_tv([a[0]] * 100, b[:100]) > 0.8  # One story written 100 times covers nothing.
  assert synthetic.coverage_tv(["the the the."] * 10, b[:10]) > 0.9
  with pytest.raises(ValueError, match="needs samples and reference"):
    synthetic.coverage_tv([], b)


def test_coverage_by_slot_names_the_missing_choices():
  a, b = synthetic.generate_stories(400, seed=0), synthetic.generate_stories(400, seed=1)
  # Every character and friend called Lily: only the two name slots move.
  names = re.compile(r"\b(" + "|".join(synthetic.NAMES) + r")\b")
  lily = [names.sub("Lily", t) for t in a]
  by_slot = synthetic.coverage_tv_by_slot(lily, b)
  assert set(by_slot) == set(synthetic.COVERAGE_SLOTS)
  assert by_slot["name"] > 0.8 and by_slot["friend"] > 0.8
  assert all(by_slot[k] == synthetic.coverage_tv_by_slot(a, b)[k] for k in by_slot if k not in ("name", "friend"))
  assert synthetic.coverage_tv(lily, b) == pytest.approx(np.mean(list(by_slot.values())))
