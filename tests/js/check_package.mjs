// Loads an `svlm export --layout transformers.js` folder with transformers.js itself, offline, and reports what
// the library makes of it, for tests/test_transformersjs.py to judge against Python and PyTorch.
//
//   node tests/js/check_package.mjs spec.json
//
// spec.json: {model_dir, dtypes: ["fp32", "int8", "q4"], question, max_new_tokens, images: [paths],
//             python_pixels: [raw float32 files, one per image], pixel_shape: [1, 1, 3, H, W],
//             pixels_out: folder for the library's own pixel values, out: result file}
// Result: the chat-template prompt and its ids as the library's processor gives them; per dtype and image the
// greedy tokens and text (a) with Python's pixel values fed in and (b) with the library's own preprocessing
// (sharp), and load / generation times. The library's pixel values are written as raw float32 files.
import fs from "node:fs";
import path from "node:path";
import { AutoModelForVision2Seq, AutoProcessor, RawImage, Tensor, env } from "@huggingface/transformers";

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
env.allowRemoteModels = false; // offline: a missing file is an error, never a download
env.localModelPath = path.dirname(path.resolve(spec.model_dir));
const id = path.basename(path.resolve(spec.model_dir));

const processor = await AutoProcessor.from_pretrained(id);
const messages = [{ role: "user", content: [{ type: "image" }, { type: "text", text: spec.question }] }];
const prompt = processor.apply_chat_template(messages, { add_generation_prompt: true });

// The library's own preprocessing, once per image (it does not depend on the dtype).
const own = [];
fs.mkdirSync(spec.pixels_out, { recursive: true });
for (const [i, file] of spec.images.entries()) {
  const inputs = await processor(prompt, [await RawImage.read(file)]);
  const out = path.join(spec.pixels_out, `${i}.f32`);
  fs.writeFileSync(out, Buffer.from(inputs.pixel_values.data.buffer, inputs.pixel_values.data.byteOffset,
    inputs.pixel_values.data.byteLength));
  own.push({ inputs, pixel_file: out, pixel_shape: inputs.pixel_values.dims });
}

const ids = (t) => Array.from(t.data, Number);

async function greedy(model, inputs) {
  const t0 = performance.now();
  const seq = await model.generate({ ...inputs, max_new_tokens: spec.max_new_tokens, do_sample: false });
  const ms = performance.now() - t0;
  const fresh = seq.slice(null, [inputs.input_ids.dims[1], null]);
  return { tokens: ids(fresh), text: processor.batch_decode(fresh, { skip_special_tokens: true })[0], ms };
}

const result = { prompt, prompt_ids: ids(own[0].inputs.input_ids), own_pixels: own.map((o) => o.pixel_file),
                 own_pixel_shape: own[0].pixel_shape, dtypes: {} };
for (const dtype of spec.dtypes) {
  const t0 = performance.now();
  const model = await AutoModelForVision2Seq.from_pretrained(id, { dtype, device: "cpu" });
  const load_ms = performance.now() - t0;
  const python = [], library = [];
  for (const [i, file] of spec.python_pixels.entries()) {
    const raw = fs.readFileSync(file);
    const pixels = new Tensor("float32", new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4),
      spec.pixel_shape);
    python.push(await greedy(model, { ...own[i].inputs, pixel_values: pixels }));
    library.push(await greedy(model, own[i].inputs));
  }
  result.dtypes[dtype] = { class: model.constructor.name, load_ms, python_pixels: python, own_preprocessing: library };
  await model.dispose();
}
fs.writeFileSync(spec.out, JSON.stringify(result));
