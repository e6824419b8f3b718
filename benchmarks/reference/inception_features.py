r"""PyTorch's FID Inception at batch 64, timed on CPU: pytorch-fid's way of computing FID features
(uint8 images -> [0, 1] -> bilinear resize to 299x299, align_corners=False -> [-1, 1] ->
InceptionV3 to the 2048-d pool3), on torchvision's InceptionV3 trunk with random weights (pytorch-fid
swaps in blocks of the same shapes and FLOPs; throughput needs no weights, and none can be fetched).

For side-by-side measurements only (`side_by_side.sh inception`); needs `pip install torch
torchvision`, which the project and its tests never use:
    python benchmarks/reference/inception_features.py IMAGE_SIZE BATCH ITERS
"""

import sys

import torch
import torch.nn.functional as F
import torchvision

import timing  # benchmarks/reference/timing.py (this script's folder is on sys.path)

image_size, batch, iters = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
model.fc = torch.nn.Identity()  # pool3 features [batch, 2048] (dropout is inert in eval mode).
model.eval()
images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)


def features():
  with torch.no_grad():
    x = F.interpolate(images.float() / 255, size=(299, 299), mode='bilinear', align_corners=False)
    return model(2 * x - 1)


assert features().shape == (batch, 2048)
median, best = timing.time_steps(features, iters)
print(f'pytorch inception {image_size}^2 batch {batch}: median {median:.2f} s, best {best:.2f} s,'
      f' {batch / median:.2f} images/s, peak RSS {timing.peak_rss_gb():.1f} GB, '
      f'threads {torch.get_num_threads()}')
