#!/bin/sh
# Installs the cloud CLIs of the full sandbox image; run as root by Dockerfile.sandbox.full,
# which passes the versions as build arguments (environment variables here).
#
# How each is verified:
#   kubectl, helm, terraform, gh  release binaries checked against a SHA-256: the one given in
#                                 <TOOL>_SHA256 when set (pin it for reproducible builds),
#                                 else the checksum file the project publishes next to them
#   gcloud, az                    their vendors' apt repositories (signed; versions pinned)
#   aws                           the official v2 installer zip for the pinned version
#                                 (AWS publishes a PGP signature, not a checksum file)
# Multi-arch: amd64 and arm64, from TARGETARCH (BuildKit) or dpkg's architecture.
set -eu

arch="${TARGETARCH:-$(dpkg --print-architecture)}"
case "$arch" in
  amd64) aws_arch=x86_64 ;;
  arm64) aws_arch=aarch64 ;;
  *) echo "install-cloud-tools: unsupported architecture $arch (amd64 or arm64)" >&2; exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

fetch() {
  curl -fsSL --retry 3 --retry-connrefused -o "$2" "$1" \
    || { echo "install-cloud-tools: cannot download $1 (the full image needs the vendors' download sites)" >&2; exit 1; }
}

# verify FILE PINNED_SHA256 CHECKSUM_URL: the pinned sum when given, else the published one.
verify() {
  file=$1 pinned=$2 sums_url=$3
  if [ -n "$pinned" ]; then
    expected=$pinned
  else
    fetch "$sums_url" sums
    # Checksum files list "SUM  NAME" lines, or hold a bare SUM (kubectl, helm).
    expected=$(awk -v f="$file" 'NF == 1 { print $1; exit } $2 == f || $2 == "*" f { print $1; exit }' sums)
  fi
  [ -n "$expected" ] || { echo "install-cloud-tools: no checksum for $file" >&2; exit 1; }
  echo "$expected  $file" | sha256sum -c -
}

echo "kubectl $KUBECTL_VERSION"
fetch "https://dl.k8s.io/release/v${KUBECTL_VERSION}/bin/linux/${arch}/kubectl" kubectl
verify kubectl "${KUBECTL_SHA256:-}" "https://dl.k8s.io/release/v${KUBECTL_VERSION}/bin/linux/${arch}/kubectl.sha256"
install -m 0755 kubectl /usr/local/bin/kubectl

echo "helm $HELM_VERSION"
f="helm-v${HELM_VERSION}-linux-${arch}.tar.gz"
fetch "https://get.helm.sh/$f" "$f"
verify "$f" "${HELM_SHA256:-}" "https://get.helm.sh/$f.sha256sum"
tar -xzf "$f" "linux-${arch}/helm"
install -m 0755 "linux-${arch}/helm" /usr/local/bin/helm

echo "terraform $TERRAFORM_VERSION"
f="terraform_${TERRAFORM_VERSION}_linux_${arch}.zip"
fetch "https://releases.hashicorp.com/terraform/${TERRAFORM_VERSION}/$f" "$f"
verify "$f" "${TERRAFORM_SHA256:-}" "https://releases.hashicorp.com/terraform/${TERRAFORM_VERSION}/terraform_${TERRAFORM_VERSION}_SHA256SUMS"
unzip -q "$f" terraform
install -m 0755 terraform /usr/local/bin/terraform

echo "gh $GH_VERSION"
f="gh_${GH_VERSION}_linux_${arch}.tar.gz"
fetch "https://github.com/cli/cli/releases/download/v${GH_VERSION}/$f" "$f"
verify "$f" "${GH_SHA256:-}" "https://github.com/cli/cli/releases/download/v${GH_VERSION}/gh_${GH_VERSION}_checksums.txt"
tar -xzf "$f"
install -m 0755 "gh_${GH_VERSION}_linux_${arch}/bin/gh" /usr/local/bin/gh

echo "aws $AWSCLI_VERSION"
fetch "https://awscli.amazonaws.com/awscli-exe-linux-${aws_arch}-${AWSCLI_VERSION}.zip" awscli.zip
if [ -n "${AWSCLI_SHA256:-}" ]; then echo "$AWSCLI_SHA256  awscli.zip" | sha256sum -c -; fi
unzip -q awscli.zip
./aws/install --install-dir /usr/local/aws-cli --bin-dir /usr/local/bin

echo "gcloud $GCLOUD_VERSION, az $AZURE_CLI_VERSION"
install -d -m 0755 /etc/apt/keyrings
fetch https://packages.cloud.google.com/apt/doc/apt-key.gpg /etc/apt/keyrings/cloud.google.gpg
fetch https://packages.microsoft.com/keys/microsoft.asc /etc/apt/keyrings/microsoft.asc
echo "deb [signed-by=/etc/apt/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
  > /etc/apt/sources.list.d/google-cloud-sdk.list
echo "deb [arch=${arch} signed-by=/etc/apt/keyrings/microsoft.asc] https://packages.microsoft.com/repos/azure-cli/ bookworm main" \
  > /etc/apt/sources.list.d/azure-cli.list
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
  "google-cloud-cli=${GCLOUD_VERSION}-0" \
  "google-cloud-cli-gke-gcloud-auth-plugin=${GCLOUD_VERSION}-0" \
  "azure-cli=${AZURE_CLI_VERSION}-1~bookworm"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log

# Each CLI answers, or the build fails here rather than in an agent's first command.
kubectl version --client
helm version --short
terraform version
gh --version | head -n 1
aws --version
gcloud --version | head -n 1
az version --output tsv --query '"azure-cli"'
