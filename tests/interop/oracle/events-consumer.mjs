// A backend in another language than Rust reading wafleet's session events as proto3 JSON
// (a worker started with `--event-encoding json`), with the stock NATS JavaScript client
// and nothing compiled from the .proto files.
//
//   node events-consumer.mjs <nats_url> <subject_filter> <until_kind> <timeout_ms>
//
// Reads the stream WAFLEET_EVENTS from its start through an ordered consumer filtered to
// <subject_filter> (e.g. `wafleet.v1.acme.evt.session.desk.>`) and prints one JSON line per
// event: {"subject", "stream_seq", "msg_id" (the Nats-Msg-Id header), "content_type",
// "event" (the payload parsed with JSON.parse)}. Stops after the first event whose
// subject's last token is <until_kind> (exit 0), or fails (exit 1) after <timeout_ms>, or
// at once on a payload that is not JSON.
import { connect } from 'nats';

const [url, filter, untilKind, timeoutArg] = process.argv.slice(2);
const nc = await connect({ servers: url });
const timer = setTimeout(() => {
  console.error(`events-consumer: no "${untilKind}" event within ${timeoutArg} ms`);
  process.exit(1);
}, Number(timeoutArg));
const js = nc.jetstream();
const consumer = await js.consumers.get('WAFLEET_EVENTS', { filterSubjects: [filter] });
const messages = await consumer.consume();
for await (const m of messages) {
  const text = new TextDecoder().decode(m.data);
  let event;
  try {
    event = JSON.parse(text);
  } catch (e) {
    console.error(`events-consumer: ${m.subject}: not JSON: ${e.message}`);
    process.exit(1);
  }
  console.log(
    JSON.stringify({
      subject: m.subject,
      stream_seq: m.seq,
      msg_id: m.headers?.get('Nats-Msg-Id') ?? null,
      content_type: m.headers?.get('Content-Type') ?? null,
      event,
    }),
  );
  if (m.subject.split('.').pop() === untilKind) break;
}
clearTimeout(timer);
await nc.close();
