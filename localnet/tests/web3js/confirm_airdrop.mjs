// Confirms an airdrop with @solana/web3.js 1.x, as a wallet or dApp would: requestAirdrop over
// HTTP, confirmTransaction over the PubSub WebSocket (signatureSubscribe at the RPC port + 1,
// which web3.js derives from the RPC URL), then getBalance. Prints one JSON line.
//
// Usage: CLAW_WEB3JS_DIR=DIR node confirm_airdrop.mjs RPC_URL
// DIR is the directory whose node_modules holds @solana/web3.js (scripts/test.sh installs it).
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';

const rpcUrl = process.argv[2];
const dir = process.env.CLAW_WEB3JS_DIR;
if (!rpcUrl || !dir) {
  console.error('usage: CLAW_WEB3JS_DIR=DIR node confirm_airdrop.mjs RPC_URL');
  process.exit(2);
}
// ES modules ignore NODE_PATH: resolve web3.js from DIR explicitly.
const require = createRequire(join(dir, 'package.json'));
const { Connection, Keypair, LAMPORTS_PER_SOL } = require('@solana/web3.js');
const { version } = require('@solana/web3.js/package.json');

try {
  const connection = new Connection(rpcUrl, 'confirmed');
  const wallet = Keypair.generate();
  const lamports = LAMPORTS_PER_SOL;
  const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash();
  const signature = await connection.requestAirdrop(wallet.publicKey, lamports);
  const started = performance.now();
  const confirmed = await connection.confirmTransaction({
    signature,
    blockhash,
    lastValidBlockHeight,
  });
  const confirmMs = performance.now() - started;
  const balance = await connection.getBalance(wallet.publicKey);
  console.log(
    JSON.stringify({
      web3js: version,
      signature,
      slot: confirmed.context.slot,
      err: confirmed.value.err,
      lamports,
      balance,
      confirmMs: Math.round(confirmMs),
    }),
  );
  process.exit(0);
} catch (error) {
  console.error(`confirm_airdrop failed: ${error?.stack ?? error}`);
  process.exit(1);
}
