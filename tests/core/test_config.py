"""The config base: frozen, checked when built, one clear error for an unknown or renamed setting."""

import dataclasses
import json

import pytest

from dreamy.core.config import ConfigError, json_value
from dreamy.language import EPOConfig, GCGConfig
from dreamy.sae import SAETrainConfig
from dreamy.vision import DreamConfig, Transforms


def test_an_unknown_setting_names_the_closest_ones():
    with pytest.raises(ConfigError, match=r"unknown DreamConfig setting 'stpes'; did you mean 'steps'\?"):
        DreamConfig.build(stpes=3)
    with pytest.raises(ConfigError, match="it is called 'children' now"):
        GCGConfig.build(batch_size=4)
    with pytest.raises(ConfigError, match="it is called 'fluency_weight_range' now"):
        EPOConfig.build(lambda_range=(0.1, 10))


@pytest.mark.parametrize("make, words", [
    (lambda: EPOConfig(lambda_range=(0.1, 10)),
     "EPOConfig has no setting 'lambda_range': it is called 'fluency_weight_range' now"),
    (lambda: EPOConfig(children_per_member=4), "EPOConfig has no setting 'children_per_member': it is called 'children' now"),
    (lambda: GCGConfig(batch_size=4), "GCGConfig has no setting 'batch_size': it is called 'children' now"),
    (lambda: DreamConfig(stpes=3), "unknown DreamConfig setting 'stpes'; did you mean 'steps'?"),
    (lambda: SAETrainConfig(featurs=8), "unknown SAETrainConfig setting 'featurs'; did you mean 'features'?"),
    (lambda: dataclasses.replace(EPOConfig(), lambda_range=(0.1, 10)), "it is called 'fluency_weight_range' now"),
])
def test_the_constructor_refuses_unknown_and_old_names_as_build_does(make, words):
    with pytest.raises(ConfigError) as caught:  # a ConfigError, not the dataclass's raw TypeError
        make()
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_configs_still_pickle_copy_and_show_their_fields():
    import copy
    import inspect
    import pickle

    config = EPOConfig(iters=3, population=4)
    assert pickle.loads(pickle.dumps(config)) == config == copy.deepcopy(config)
    assert list(inspect.signature(EPOConfig).parameters) == EPOConfig.field_names()


def test_build_overrides_a_given_config_and_refuses_another_kind():
    base = EPOConfig(iters=30, population=4)
    assert EPOConfig.build(base, iters=5) == dataclasses.replace(base, iters=5) and base.iters == 30
    assert EPOConfig.build(base) is base
    with pytest.raises(ConfigError, match="expected a EPOConfig, got GCGConfig"):
        EPOConfig.build(GCGConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.iters = 3


@pytest.mark.parametrize("make, words", [
    (lambda: DreamConfig(steps=0), "DreamConfig.steps must be >= 1, got 0"),
    (lambda: DreamConfig(lr=float("nan")), "DreamConfig.lr must be a finite number"),
    (lambda: DreamConfig(steps=True), "DreamConfig.steps must be an integer"),
    (lambda: DreamConfig(image_size=(32,)), "DreamConfig.image_size must be (height, width)"),
    (lambda: DreamConfig(regularizers={"tvv": 1.0}), "unknown regularizer 'tvv'"),
    (lambda: DreamConfig(regularizers={"tv": -1.0}), "is a weight >= 0"),
    (lambda: EPOConfig(fluency_weight_range=(3.0, 1.0)), "0 < low <= high"),
    (lambda: EPOConfig(scoring="fast"), "EPOConfig.scoring must be one of 'auto', 'packed', 'grouped', 'full'"),
    (lambda: GCGConfig(init=[1, "x"]), "GCGConfig.init must be None, a text or token ids"),
    (lambda: GCGConfig(fluency_weight=-1), "GCGConfig.fluency_weight must be >= 0"),
    (lambda: SAETrainConfig(features=8, k=9), "SAETrainConfig.k 9 must be <= features 8"),
])
def test_values_out_of_range_are_refused_naming_the_field(make, words):
    with pytest.raises(ConfigError) as caught:
        make()
    assert words in str(caught.value)


def test_to_dict_is_json_and_fingerprints_objects_by_repr():
    config = DreamConfig(transforms=Transforms(), regularizers={"tv": 0.1}, image_size=[16, 16], snapshot_steps=[2])
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["image_size"] == [16, 16] and data["transforms"] == repr(Transforms()) and data["snapshot_steps"] == [2]
    assert config.image_size == (16, 16)  # normalized while checked
    assert json_value({len: 1.0}) == {"len": 1.0}
