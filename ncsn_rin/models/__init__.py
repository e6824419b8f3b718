"""Networks. They map tensors to tensors and never read a config: `experiment.build_model` splats
the config's model section (`name` + constructor arguments) into `MODELS[name]`."""

from ncsn_rin.models.refinenet import NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from ncsn_rin.models.rin import RIN

MODELS = {'rin': RIN, 'ncsnv2': NCSNv2, 'ncsnv2_deeper': NCSNv2Deeper,
          'ncsnv2_deepest': NCSNv2Deepest}
