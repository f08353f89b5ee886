-- The standalone queue carries what RabbitMQ carries in message headers: the sender's trace
-- context and the publishing time (for the consumer's span and its lag).
ALTER TABLE queued_message ADD COLUMN traceparent TEXT;
ALTER TABLE queued_message ADD COLUMN published_ms INTEGER;
