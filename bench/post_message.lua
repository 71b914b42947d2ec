-- wrk script for llmq-gateway: the source design's load test, unchanged.
--   wrk -t2 -c400 -d30s -s bench/post_message.lua http://127.0.0.1:8080
-- POSTs the design's JSON body (the gateway gives each a new UUIDv7 id) and
-- prints every answer whose status is not 201.
wrk.method = "POST"
wrk.path = "/api/v1/messages"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"conversation_id":"conv_123","user_id":"user_456","content":"Hello","priority":"normal"}'

response = function(status, headers, body)
  if status ~= 201 then
    io.write(string.format("status %d: %s\n", status, body))
  end
end

done = function(summary, latency, requests)
  io.write(string.format("completed %d requests, %d errors (connect %d, read %d, write %d, status %d, timeout %d)\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout))
  io.write(string.format("latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
