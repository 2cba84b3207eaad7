package trailspike.peer;

import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.processor.StreamPartitioner;
import org.apache.kafka.streams.state.Stores;

/**
 * trailspike's detection as a Kafka Streams application, for the benchmark.
 *
 * <pre>
 * input -> parse (value deserializer) -> event time (extractor)
 *   -> Marker: a CALL mark per counted call, keyed by ARN, and PROGRESS /
 *      IDLE marks that carry each input partition's event time
 *   -> SpikeProcessor: counts per (ARN, 1 h window), trailspike's
 *      watermark (lowest partition high-water mark minus 15 min), and on
 *      each closed window the baseline update and spike rule -> alerts topic
 * </pre>
 *
 * Kafka Streams' windowed aggregation (grace plus suppress) is not used:
 * it closes windows by the task's stream time, the highest timestamp the
 * task has seen, which behind a repartition topic is that of the fastest
 * upstream task. With several input partitions read at different speeds,
 * that ran hours ahead of the slowest partition and dropped most calls as
 * "expired window". The processors below close windows by trailspike's
 * watermark instead (SPEC.md section 2).
 *
 * Two ways to get the records of one ARN into one task, chosen by MODE:
 * <ul>
 * <li>{@code by-key}: the producer keyed each record by its
 * userIdentity.arn (the empty string when it has none), so the input is
 * already partitioned by ARN and no repartition topic is needed. Each task
 * then keeps the watermark of its own partition alone. A counted record
 * whose key is not its ARN is counted as a mismatch and not counted.
 * <li>{@code repartition}: the input has no keys (as CloudTrail connectors
 * write it), so calls are re-keyed by ARN through a repartition topic, and
 * PROGRESS and IDLE marks are sent to every repartition partition (KIP-837
 * multicast), so that every detecting task knows every input partition's
 * event time, as trailspike's watermark does.
 * </ul>
 *
 * Arguments: BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC APPLICATION_ID STATE_DIR
 * [MODE [THREADS [IDLE_MS]]]. The process stops itself once every input
 * partition has been processed up to the end offset it had at start and no
 * processor has seen a record for IDLE_MS (default 3000): the harness
 * subtracts IDLE_MS from the wall time it measures.
 */
public final class SpikePeer {
    static final Duration WINDOW = Duration.ofHours(1);
    static final Duration GRACE = Duration.ofMinutes(15);
    /** Key of marks that only carry event time; never a valid ARN. */
    static final String TICK = "";

    enum Mode { BY_KEY, REPARTITION }

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: SpikePeer BOOTSTRAP INPUT OUTPUT APP_ID STATE_DIR "
                    + "[by-key|repartition [THREADS [IDLE_MS]]]");
            System.exit(2);
        }
        String bootstrap = args[0], input = args[1], output = args[2];
        Mode mode = args.length > 5 && args[5].equals("repartition") ? Mode.REPARTITION : Mode.BY_KEY;
        int threads = args.length > 6 ? Integer.parseInt(args[6]) : 2;
        long idleMs = args.length > 7 ? Long.parseLong(args[7]) : 3000;

        Map<Integer, Long> ends = endOffsets(bootstrap, input);
        Activity activity = new Activity();
        Topology topology = topology(input, output, mode, ends.size(), activity);
        KafkaStreams streams = new KafkaStreams(topology, config(args, threads));
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            System.exit(1);
            return null;
        });
        streams.start();
        long started = System.nanoTime();
        while (!(activity.reached(ends) && activity.idleMillis() >= idleMs)) {
            Thread.sleep(100);
        }
        System.err.printf("peer: caught up after %.3f s (includes %d ms idle); mode %s, "
                        + "dropped records %.0f, key mismatches %d, late calls %d%n",
                (System.nanoTime() - started) / 1e9, idleMs, mode,
                droppedRecords(streams), activity.mismatches(), activity.lateCalls());
        streams.close(Duration.ofSeconds(60));
    }

    /** Records Kafka Streams dropped (bad input, future event times). */
    static double droppedRecords(KafkaStreams streams) {
        return streams.metrics().values().stream()
                .filter(m -> m.metricName().name().equals("dropped-records-total"))
                .mapToDouble(m -> ((Number) m.metricValue()).doubleValue())
                .sum();
    }

    static Properties config(String[] args, int threads) {
        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[4]);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        // As trailspike's default: every record counted at least once;
        // exactly_once_v2 would add transactions on top.
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        p.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG,
                LogAndContinueExceptionHandler.class);
        p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // A single broker holds one replica of the internal topics.
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        return p;
    }

    /**
     * @param sources input partitions: in repartition mode every detecting
     *                task waits for all of them, as trailspike's watermark
     */
    static Topology topology(String input, String output, Mode mode, int sources, Activity activity) {
        StreamsBuilder builder = new StreamsBuilder();
        Serde<Event> events = Serdes.serdeFrom((topic, e) -> {
            throw new UnsupportedOperationException("events are only read");
        }, new EventDeserializer());
        // Cached, as the DSL's stores are by default: most calls only
        // touch the open count of a window that is still in the cache.
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(SpikeProcessor.BASELINES),
                Serdes.String(), Baseline.serde()).withCachingEnabled());
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(SpikeProcessor.COUNTS),
                Serdes.Bytes(), Serdes.Long()).withCachingEnabled());
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(SpikeProcessor.CLOCKS),
                Serdes.Integer(), Serdes.Long()));
        KStream<String, Mark> marks = builder
                .stream(input, Consumed.with(Serdes.String(), events)
                        .withTimestampExtractor(new EventTimeExtractor()))
                .process(() -> new Marker(activity, mode == Mode.BY_KEY));
        int expected = 1;
        if (mode == Mode.REPARTITION) {
            marks = marks.repartition(Repartitioned.<String, Mark>with(Serdes.String(), Mark.serde())
                    .withName("by-arn")
                    .withStreamPartitioner(new ByArn()));
            expected = sources;
        }
        int expectedSources = expected;
        marks.process(() -> new SpikeProcessor(activity, expectedSources),
                        SpikeProcessor.BASELINES, SpikeProcessor.COUNTS, SpikeProcessor.CLOCKS)
                .to(output, Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }

    /**
     * Calls by the default hash of their ARN; marks that carry event time
     * to every partition (KIP-837 multicast).
     */
    static final class ByArn implements StreamPartitioner<String, Mark> {
        @Override
        public Optional<Set<Integer>> partitions(String topic, String key, Mark value, int partitions) {
            if (key.equals(TICK)) {
                return Optional.of(IntStream.range(0, partitions).boxed().collect(Collectors.toSet()));
            }
            byte[] bytes = key.getBytes(java.nio.charset.StandardCharsets.UTF_8);
            return Optional.of(Set.of(Utils.toPositive(Utils.murmur2(bytes)) % partitions));
        }
    }

    /** End offset of each partition of {@code topic} now. */
    static Map<Integer, Long> endOffsets(String bootstrap, String topic) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            TopicDescription description = admin.describeTopics(Set.of(topic))
                    .allTopicNames().get().get(topic);
            Map<TopicPartition, OffsetSpec> request = new HashMap<>();
            description.partitions().forEach(info ->
                    request.put(new TopicPartition(topic, info.partition()), OffsetSpec.latest()));
            Map<Integer, Long> ends = new HashMap<>();
            admin.listOffsets(request).all().get()
                    .forEach((tp, info) -> ends.put(tp.partition(), info.offset()));
            return ends;
        }
    }
}
