"""The benchmark's yardstick: a moderation loop the way a hurried engineer writes it.

getmany (at most CONCURRENCY records) → gather the guard calls → Redis SET each verdict → send each verdict
and wait for the acks → commit. No idempotency check, no retries, no dead letters, no tracing: a guard
error or a bad record stops it. It reads the same GUARDQ_* environment as ``guardq run`` so both run on
the same topics, guard and Redis.

Run: ``python -m bench.baseline`` (SIGTERM or SIGINT stops it after the batch in hand).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

BATCH = 64


async def _classify(session: aiohttp.ClientSession, url: str, model: str, text: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 128,
    }
    async with session.post(url + "/chat/completions", json=body) as response:
        response.raise_for_status()
        reply = await response.json()
    content = reply["choices"][0]["message"]["content"]
    label = "unsafe" if "Safety: Unsafe" in content else "safe"
    return label


async def run() -> None:
    env = os.environ
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        env["GUARDQ_INPUT_TOPIC"],
        bootstrap_servers=env["GUARDQ_KAFKA_BOOTSTRAP"],
        group_id=env["GUARDQ_GROUP_ID"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=env["GUARDQ_KAFKA_BOOTSTRAP"])
    redis = Redis.from_url(env["GUARDQ_REDIS_URL"])
    prefix = env.get("GUARDQ_REDIS_PREFIX", "baseline:")
    url = env["GUARDQ_GUARD_URL"]
    model = env.get("GUARDQ_GUARD_MODEL", "Qwen/Qwen3Guard-Gen-8B")
    verdicts = env["GUARDQ_VERDICT_TOPIC"]
    await consumer.start()
    await producer.start()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BATCH))
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            messages = [json.loads(r.value) for records in batches.values() for r in records]
            if not messages:
                continue
            labels = await asyncio.gather(
                *(_classify(session, url, model, message["text"]) for message in messages)
            )
            documents = [
                json.dumps({"id": message["id"], "label": label}).encode()
                for message, label in zip(messages, labels, strict=True)
            ]
            await asyncio.gather(
                *(
                    redis.set(prefix + "verdict:" + message["id"], document)
                    for message, document in zip(messages, documents, strict=True)
                )
            )
            sends = [
                await producer.send(verdicts, document, key=message["id"].encode())
                for message, document in zip(messages, documents, strict=True)
            ]
            await asyncio.gather(*sends)
            await consumer.commit()
    finally:
        await session.close()
        await consumer.stop()
        await producer.stop()
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(run())
