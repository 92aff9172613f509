"""dreamy/cli/sites.py: `dream sites MODEL` lists module paths, or with `--names transformerlens` the hook names."""

from dreamy.cli import main


def test_transformerlens_names_are_listed_with_their_shapes(capsys):
    assert main(["sites", "tiny:lm", "--names", "transformerlens"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line for line in lines}
    assert "blocks.1.hook_resid_post" in listed and "ln_final.hook_normalized" in listed and "hook_embed" in listed
    assert listed["blocks.0.mlp.hook_post"].split()[1:4] == ["[1,", "10,", "128]"]
    assert "4 heads of 16: units head=H,I | head=H,norm" in listed["blocks.0.attn.hook_z"]
    assert listed["blocks.1.attn.hook_pattern"].split()[1:5] == ["[1,", "4,", "10,", "10]"]
    assert "unit head=H,key=J" in listed["blocks.1.attn.hook_pattern"]
    assert not any(line.startswith("model.layers") for line in lines)


def test_a_model_without_transformerlens_names_is_refused_in_one_line(capsys):
    assert main(["sites", "tiny:cnn", "--names", "transformerlens"]) == 2
    err = capsys.readouterr().err
    assert "tiny:cnn is not a Llama-, Gemma-3-, GPT-2- or GPT-NeoX-style language model" in err and err.count("\n") == 1
