# sendguard: the DKIM-signing milter and the warmup-cap policy daemon.
#
#   docker build -t sendguard .      (or: podman build -t sendguard .)
#   docker run --network host -v /etc/sendguard:/etc/sendguard:ro sendguard run --config /etc/sendguard/sendguard.toml
#
# --network host (or another container's namespace, as docker-compose.test.yml
# does with Postfix's) keeps the snippets' inet:127.0.0.1:8891 and :10040 true.
# State (the policy daemon's counters) lives in /var/lib/sendguard: give it a
# volume, or a new container starts with empty windows.
#
# Two stages: the first compiles pymilter against libmilter and installs the
# project into a virtualenv; the second carries only that virtualenv and the
# runtime libraries, no compiler.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev libmilter-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Extra CA certificates (PEM text) to trust while building, for networks whose
# proxy re-signs TLS to PyPI. Empty by default; used by this build stage only,
# never copied into the final image.
ARG EXTRA_CA_CERTS=""
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/build-extra.crt && update-ca-certificates; \
    fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/sendguard
# Dependencies first, in their own layer, so a change to the source does not
# recompile pymilter. The list is pyproject.toml's own, read from it, so the two
# cannot drift apart.
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /src/requirements.txt \
 && /opt/sendguard/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt
COPY . /src
# A regular (not editable) install: the image must not depend on /src.
RUN /opt/sendguard/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /src \
 && rm -rf /src

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 libmilter1.0.1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sendguard \
 && useradd --system --uid 10001 --gid sendguard --home-dir /var/lib/sendguard --shell /usr/sbin/nologin sendguard \
 && install -d -o sendguard -g sendguard -m 0750 /var/lib/sendguard \
 && install -d -m 0755 /etc/sendguard
COPY --from=build /opt/sendguard /opt/sendguard
ENV PATH=/opt/sendguard/bin:$PATH PYTHONUNBUFFERED=1
# Never the source tree: pymilter's C extension is named `milter`, and a
# folder of that name in the working directory would shadow it.
WORKDIR /var/lib/sendguard
USER sendguard
EXPOSE 8891 10040 9466 9467
ENTRYPOINT ["sendguard"]
CMD ["run"]
