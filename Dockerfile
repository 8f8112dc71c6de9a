# One image for every omnistock service; docker-compose.yml picks the service with `omnistock serve NAME`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY ledger ./ledger
RUN pip install . && useradd --system --create-home omnistock && mkdir /data /fabric && chown omnistock /data /fabric
USER omnistock
ENV OMNISTOCK_DATA_DIR=/data OMNISTOCK_HOST=0.0.0.0
ENTRYPOINT ["omnistock"]
CMD ["up"]
