"""The offline demo on real stories: configs/demo.py's pipeline on the 1,200-story TinyStories sample that ships
with driftjax (driftjax/assets/tinystories, CDLA-Sharing-1.0), 256 stories held out as the data reference.

python -m driftjax.main --config=configs/demo_tinystories.py --workdir=runs/demo_tinystories
Stories are longer than 96 tokens and are cut there (counted in the log); there is no grammar to check, so the
targets are gen-PPL under the independent evaluator against the encoder LM's own samples (ar) and the data.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.data.source = "tinystories_sample"
  config.data.holdout = 256  # Of 1,200 stories: 944 train the LMs and the generator.
  config.pretrain.docs = 0  # Every training story.
  return config
