"""AdaFocus V1's stage 1 reads two stage-0 files: each gives the encoder it trained, official files too.

The official stage 1 takes ``pretrained_glancer`` (the glance encoder's stage-0 run) and ``pretrained_focuser``
(the focus encoder's); an official file does not say which encoder it trained, so their order decides, and the
second file must not overwrite the glance encoder the first one gave.
"""
import logging

import torch

from models.adafocus_v1 import OFFICIAL_KEYS
from ops.staged_training import checkpoint_stage, load_handover
from test_v1_training import _tiny_model


def _official_file(model):
    """An official stage-0 checkpoint of ``model`` (``model_state_dict`` in the official key layout)."""
    return {"epoch": 15, "model_state_dict": {OFFICIAL_KEYS.to_official(k): v.clone()
                                              for k, v in model.state_dict().items()}}


def test_two_official_stage_0_files_give_the_glance_of_the_first_and_the_focus_of_the_second():
    glance_run, focus_run, target = _tiny_model(1), _tiny_model(2), _tiny_model(3)
    files = [("globalcnn.pth.tar", _official_file(glance_run)), ("localcnn.pth.tar", _official_file(focus_run))]
    handover = [(path, ckpt, *checkpoint_stage(ckpt, path)) for path, ckpt in files]
    assert [entry[2:] for entry in handover] == [(None, None), (None, None)]  # official files say neither
    load_handover(target, handover, logging.getLogger("test"))
    for name, value in target.glance.state_dict().items():
        assert torch.equal(value, glance_run.glance.state_dict()[name]), name
    for name, value in target.focus.state_dict().items():
        assert torch.equal(value, focus_run.focus.state_dict()[name]), name
