import subprocess
import sys


def test_data_layer_imports_no_ray_torch_or_deepspeed():
    # a fresh interpreter, so modules imported by other tests cannot hide a transitive import
    code = ("import sys, mmrlhf.data; "
            "print(sorted(m for m in ('ray', 'torch', 'deepspeed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
