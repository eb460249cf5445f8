// The page's logic: load the export (manifest.json says the question, labels, answer tags and dtypes), then per
// uploaded image run the processor (chat template + image preprocessing) and greedy generation, streaming the
// text, and read the label from the last <answer>…</answer> block as the svlm runtime does.
import { AutoModelForVision2Seq, AutoProcessor, RawImage, TextStreamer, env } from "/lib/transformers.js";

const MODEL = "model"; // served by serve.py at /models/model/
env.allowLocalModels = true;
env.allowRemoteModels = false; // offline: never the hub
env.localModelPath = "/models/";
env.useBrowserCache = false;
env.backends.onnx.wasm.wasmPaths = "/ort/"; // onnxruntime-web's wasm files, served locally (not the CDN)

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

const manifest = await (await fetch(`/models/${MODEL}/manifest.json`)).json();
const DTYPE_LABELS = { fp32: "fp32", int8: "int8", q4: "int4 (q4)" };
for (const q of Object.values(manifest.quantizations)) {
  $("dtype").add(new Option(`${DTYPE_LABELS[q.dtype] ?? q.dtype} · ${(q.size_bytes / 1e6).toFixed(1)} MB`, q.dtype));
}
$("dtype").value = Object.values(manifest.quantizations).at(-1).dtype; // the smallest: int4 when exported

const processor = await AutoProcessor.from_pretrained(MODEL);
const models = {};
async function model(dtype) {
  models[dtype] ??= AutoModelForVision2Seq.from_pretrained(MODEL, { dtype, device: "wasm" });
  return models[dtype];
}

/** The label inside the last closed answer block, if it is one of the labels (case and spaces ignored). */
function parseLabel(text) {
  const [open, close] = manifest.answer.answer;
  let pos = 0, last = null;
  for (let start; (start = text.indexOf(open, pos)) >= 0;) {
    const end = text.indexOf(close, start + open.length);
    if (end < 0) break;
    last = text.slice(start + open.length, end);
    pos = end + close.length;
  }
  if (last === null) return null;
  return manifest.labels.find((l) => l.toLowerCase() === last.trim().toLowerCase()) ?? null;
}

let image = null;
$("image").addEventListener("change", async () => {
  const file = $("image").files[0];
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  try {
    image = await RawImage.fromBlob(file);
    $("analyze").disabled = false;
    status(`image ${image.width}×${image.height}`);
  } catch (err) {
    image = null;
    $("analyze").disabled = true;
    status(`not a readable image (${err.message})`);
  }
});

$("analyze").addEventListener("click", async () => {
  $("analyze").disabled = true;
  $("emotion").textContent = "";
  $("reasoning").value = "";
  const dtype = $("dtype").value;
  try {
    status(`loading the ${dtype} model…`);
    const m = await model(dtype);
    status("thinking…");
    const messages = [{ role: "user", content: [{ type: "image" }, { type: "text", text: manifest.prompt.question }] }];
    const prompt = processor.apply_chat_template(messages, { add_generation_prompt: true });
    const t0 = performance.now();
    const inputs = await processor(prompt, [image]);
    let first = null;
    const streamer = new TextStreamer(processor.tokenizer, {
      skip_prompt: true, skip_special_tokens: true,
      callback_function: (text) => { first ??= performance.now(); $("reasoning").value += text; },
    });
    const out = await m.generate({ ...inputs, max_new_tokens: 160, do_sample: false, streamer });
    const t1 = performance.now();
    const fresh = out.slice(null, [inputs.input_ids.dims[1], null]);
    const text = processor.batch_decode(fresh, { skip_special_tokens: true })[0];
    $("reasoning").value = text;
    const label = parseLabel(text);
    $("emotion").textContent = label ?? "no valid answer";
    $("emotion").dataset.label = label ?? "";
    const n = fresh.dims[1];
    status("done");
    $("stats").textContent = `${dtype}: first token after ${((first ?? t1) - t0).toFixed(0)} ms, ` +
      `${n} tokens in ${(t1 - t0).toFixed(0)} ms, all in this browser`;
  } catch (err) {
    status(`error: ${err.message}`);
    console.error(err);
  } finally {
    $("analyze").disabled = image === null;
  }
});
status("ready: choose an image");
