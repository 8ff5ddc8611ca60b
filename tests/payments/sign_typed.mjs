// Signs EIP-712 typed data with ethers.js (an implementation independent of eth-account), for the tests.
// stdin:  {"privateKey": "0x...", "typedData": {"domain", "types" (may include EIP712Domain), "primaryType", "message"}}
// stdout: {"signature": "0x... (65 bytes)", "digest": "0x... (the EIP-712 hash ethers computed)"}
import { TypedDataEncoder, Wallet } from "ethers";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { privateKey, typedData } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const types = { ...typedData.types };
delete types.EIP712Domain; // ethers derives the domain type from the domain object
const wallet = new Wallet(privateKey);
const signature = await wallet.signTypedData(typedData.domain, types, typedData.message);
const digest = TypedDataEncoder.hash(typedData.domain, types, typedData.message);
process.stdout.write(JSON.stringify({ signature, digest, address: wallet.address }) + "\n");
