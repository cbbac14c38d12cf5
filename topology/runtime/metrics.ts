import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * One Prometheus registry per process; metric names follow `fabric_<area>_<what>_<unit>`.
 * Components receive the Metrics object instead of reaching for a global.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly gatewayRequests = new Counter({ name: 'fabric_gateway_requests_total', help: 'Gateway requests by route and status.', labelNames: ['route', 'status'] as const, registers: [this.registry] });
  readonly gatewayEvents = new Counter({ name: 'fabric_gateway_events_total', help: 'Events by stream and outcome (accepted, rejected).', labelNames: ['stream', 'outcome'] as const, registers: [this.registry] });
  readonly gatewayInFlight = new Gauge({ name: 'fabric_gateway_in_flight_events', help: 'Events awaiting a Kafka acknowledgement.', registers: [this.registry] });
  readonly gatewayLatency = new Histogram({ name: 'fabric_gateway_request_duration_seconds', help: 'Request duration until the answer (includes the Kafka ack).', labelNames: ['route'] as const, buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers: [this.registry] });

  readonly producerQueued = new Gauge({ name: 'fabric_producer_queued_messages', help: 'Messages waiting in the batching producer.', registers: [this.registry] });
  readonly producerSent = new Counter({ name: 'fabric_producer_messages_total', help: 'Messages acknowledged by Kafka, by topic.', labelNames: ['topic'] as const, registers: [this.registry] });
  readonly producerErrors = new Counter({ name: 'fabric_producer_errors_total', help: 'Failed produce requests.', registers: [this.registry] });
  readonly producerBatchSize = new Histogram({ name: 'fabric_producer_batch_messages', help: 'Messages per produce request.', buckets: [1, 5, 10, 50, 100, 500, 1000, 5000], registers: [this.registry] });

  readonly processorRecords = new Counter({ name: 'fabric_processor_records_total', help: 'Records processed, by processor and topic.', labelNames: ['processor', 'topic'] as const, registers: [this.registry] });
  readonly processorDlq = new Counter({ name: 'fabric_processor_dlq_records_total', help: 'Records sent to a dead-letter topic.', labelNames: ['processor', 'topic', 'code'] as const, registers: [this.registry] });
  readonly processorBatchSeconds = new Histogram({ name: 'fabric_processor_batch_duration_seconds', help: 'Time from batch start to offset commit.', labelNames: ['processor'] as const, buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5], registers: [this.registry] });
  readonly processorRetries = new Counter({ name: 'fabric_processor_batch_retries_total', help: 'Batches retried after a sink failure.', labelNames: ['processor'] as const, registers: [this.registry] });
  readonly processorRestarts = new Counter({ name: 'fabric_processor_restarts_total', help: 'Consumer restarts after unexpected failures, by processor.', labelNames: ['processor'] as const, registers: [this.registry] });
  readonly processorLag = new Gauge({ name: 'fabric_processor_lag_records', help: 'Offset lag of the last batch, by processor/topic/partition.', labelNames: ['processor', 'topic', 'partition'] as const, registers: [this.registry] });

  readonly sinkRejected = new Counter({ name: 'fabric_sink_rejected_rows_total', help: 'Rows a sink refused for their content (sent to the DLQ with the server\'s message), by sink and table.', labelNames: ['sink', 'table'] as const, registers: [this.registry] });
  readonly rulesFired = new Counter({ name: 'fabric_rules_fired_total', help: 'Serving rules that decided, filtered or changed an output, by model, rule-set version and rule (counted per batch attempt).', labelNames: ['model', 'version', 'rule'] as const, registers: [this.registry] });
  readonly ruleErrors = new Counter({ name: 'fabric_rule_errors_total', help: 'Rule conditions that failed at run time (the rule set\'s fallback applied), by model and rule.', labelNames: ['model', 'rule'] as const, registers: [this.registry] });
  readonly scoringFallbacks = new Counter({ name: 'fabric_scoring_fallbacks_total', help: 'Fallback decisions by model and reason.', labelNames: ['model', 'reason'] as const, registers: [this.registry] });

  readonly experimentPredictions = new Counter({ name: 'fabric_experiment_predictions_total', help: 'Outputs made under an experiment, by model, experiment and arm (control, treatment, shadow; counted per batch attempt).', labelNames: ['model', 'experiment', 'arm'] as const, registers: [this.registry] });
  readonly shadowSeconds = new Counter({ name: 'fabric_shadow_model_seconds_total', help: 'Wall time of the engine calls of shadow versions (their cost beside the serving path), by model and version.', labelNames: ['model', 'version'] as const, registers: [this.registry] });
  readonly experimentDecisions = new Counter({ name: 'fabric_experiment_decisions_total', help: 'Experiment decisions taken by the judge, by model, outcome and action.', labelNames: ['model', 'outcome', 'action'] as const, registers: [this.registry] });
  readonly servingRows = new Counter({ name: 'fabric_serving_rows_total', help: 'Rows scored by the serving engine, by model, version and execution provider.', labelNames: ['model', 'version', 'provider'] as const, registers: [this.registry] });
  readonly servingBatchRows = new Histogram({ name: 'fabric_serving_batch_rows', help: 'Rows per ONNX run (micro-batch size), by model.', labelNames: ['model'] as const, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: [this.registry] });
  readonly servingRunSeconds = new Histogram({ name: 'fabric_serving_run_duration_seconds', help: 'ONNX run duration per micro-batch (worker round trip), by model and provider.', labelNames: ['model', 'provider'] as const, buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5], registers: [this.registry] });
  readonly servingWorkerRestarts = new Counter({ name: 'fabric_serving_worker_restarts_total', help: 'ONNX worker processes replaced after a crash or a run beyond the timeout.', registers: [this.registry] });
  readonly modelLoads = new Counter({ name: 'fabric_model_loads_total', help: 'Model version loads by model, version and outcome (loaded, failed).', labelNames: ['model', 'version', 'outcome'] as const, registers: [this.registry] });
  readonly modelServing = new Gauge({ name: 'fabric_model_serving_info', help: '1 for the model version (and provider) this process serves, by model.', labelNames: ['model', 'version', 'provider'] as const, registers: [this.registry] });
  readonly alertsRaised = new Counter({ name: 'fabric_alerts_total', help: 'Monitoring alerts raised and resolved, by model, kind, severity and state (counted per batch attempt).', labelNames: ['model', 'kind', 'severity', 'state'] as const, registers: [this.registry] });
  readonly alertWebhook = new Counter({ name: 'fabric_alert_webhook_total', help: 'Alert webhook deliveries by outcome (delivered, refused, failed after every attempt).', labelNames: ['outcome'] as const, registers: [this.registry] });
  readonly predictCache = new Counter({ name: 'fabric_predict_cache_total', help: 'Prediction cache lookups by model and result (hit, miss).', labelNames: ['model', 'result'] as const, registers: [this.registry] });
  readonly predictLatency = new Histogram({ name: 'fabric_predict_duration_seconds', help: 'POST /v1/predict latency (features, model, rules), by model.', labelNames: ['model'] as const, buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25], registers: [this.registry] });

  readonly featuresLate = new Counter({ name: 'fabric_features_late_events_total', help: 'Events routed to late.<stream> because they were beyond a feature group\'s allowed lateness (counted per batch attempt).', labelNames: ['group'] as const, registers: [this.registry] });
  readonly featuresCorrections = new Counter({ name: 'fabric_features_corrected_rows_total', help: 'Feature rows re-emitted because a late event within the lateness changed them (counted per batch attempt).', labelNames: ['group'] as const, registers: [this.registry] });

  readonly sinkRows = new Counter({ name: 'fabric_sink_rows_total', help: 'Rows written by sinks, by sink and table.', labelNames: ['sink', 'table'] as const, registers: [this.registry] });

  constructor(options: { defaults?: boolean } = {}) {
    if (options.defaults ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'fabric_process_' });
  }
}
