// Compiled (never run) by tests/browser/run.sh with `tsc --noEmit --strict`: the declarations in
// web/personascope.d.ts (and the generated web/personascope-api.d.ts) must type the API's uses in README.md.
import type { ChatResult, ErrorCode, EvalReport, Personascope, PersonascopeError, ScreenResult, VectorInfo } from '../../web/personascope';

export async function readme(ps: Personascope): Promise<void> {
  const v: VectorInfo = await ps.extract('impolite', { mode: 'prompt-last', questions: 4, calibration_items: 8 });
  const report: EvalReport = await ps.evaluate('impolite', v.id, { layers: [20], alphas: [2] }, (p) => console.log(p.stage, p.done, p.total));
  await ps.setMonitor([{ vector: v.id }]);
  await ps.setSteering([{ vector: v.id, layer: report.recommended.layer, alpha: -4, positions: 'response' }]);
  const reply: ChatResult = await ps.chat([{ role: 'user', content: 'Hi!' }], { max_tokens: 64 }, (t) => console.log(t.text, t.ms, t.scores[0]?.z));
  console.log(reply.stop === 'max_tokens', reply.timing.decode_tok_s, reply.token_scores[0]?.[0]?.percentile);
  const screened: ScreenResult = await ps.screen(v.id, '{"prompt":"a","response":"b"}', { cheap: false });
  for (const s of screened.samples) console.log(s.line, s.prompt[0]?.role, s.rank, s.z, screened.null?.std);
  try {
    await ps.exportVector(99);
  } catch (e) {
    const code: ErrorCode = (e as PersonascopeError).code;
    if (code === 'device_lost' || code === 'unknown_vector') console.log(code);
  }
}
