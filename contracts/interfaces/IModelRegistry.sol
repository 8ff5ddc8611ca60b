// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/**
 * @title IModelRegistry
 * @notice On-chain catalog of AI models sold per inference. A model has an owner, a payee, a price per call in the
 * registry's payment token, a metadata CID, an append-only history of artifact CIDs and an endpoint URL.
 *
 * Ids are `keccak256(abi.encode(owner, salt))`: the owner is part of the id, so nobody can front-run a
 * registration to squat it. The endpoint URL is not stored: it lives in the `ModelRegistered` and
 * `EndpointChanged` events, from which the catalog is built. Artifact versions are numbered from 1; each one
 * is in an `ArtifactPublished` event and only the latest is stored.
 *
 * Prices: every call costs the model's `price`; a metered model (an LLM priced by use) also has `TokenPrices`: a
 * price per input (prompt) token and per output (generated) token, and a cap on output tokens per call. A call
 * then costs `price + inputTokens * perInputToken + outputTokens * perOutputToken`. All zero: a flat model.
 */
interface IModelRegistry {
    /// @notice A CIDv1 whose multihash is sha2-256: the multicodec (0x70 dag-pb, 0x55 raw, ...) and the digest.
    struct Cid {
        uint16 codec;
        bytes32 digest;
    }

    enum Status {
        None,
        Active,
        Paused,
        Retired
    }

    /// @notice A model, stored in four slots in this order.
    struct Model {
        address owner; // slot A
        uint96 price; // slot A: token units per call
        address payee; // slot B: receives payments (channels, licenses)
        uint16 metadataCodec; // slot B
        uint16 artifactCodec; // slot B
        uint32 artifactVersion; // slot B: number of artifacts published, the latest being current
        Status status; // slot B
        bytes32 metadataDigest; // slot C
        bytes32 artifactDigest; // slot D
    }

    /// @notice Per-token prices of a metered model, in one slot of their own (flat models have none).
    struct TokenPrices {
        uint96 perInputToken; // token units per input (prompt) token
        uint96 perOutputToken; // token units per output (generated) token
        uint32 maxOutputTokens; // output tokens one call may generate at most; 0: no cap but the consumer's
    }

    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        address payee,
        uint96 price,
        Cid metadata,
        string endpoint
    );
    event ArtifactPublished(bytes32 indexed modelId, uint32 indexed version, Cid artifact);
    event MetadataUpdated(bytes32 indexed modelId, Cid metadata);
    event PriceChanged(bytes32 indexed modelId, uint96 oldPrice, uint96 newPrice);
    /// @notice The model's per-token prices are now these (all zero: flat again, `price` per call only).
    event TokenPricesChanged(
        bytes32 indexed modelId,
        uint96 perInputToken,
        uint96 perOutputToken,
        uint32 maxOutputTokens
    );
    event EndpointChanged(bytes32 indexed modelId, string endpoint);
    event PayeeChanged(bytes32 indexed modelId, address oldPayee, address newPayee);
    event ModelPaused(bytes32 indexed modelId);
    event ModelUnpaused(bytes32 indexed modelId);
    event ModelRetired(bytes32 indexed modelId);
    event ModelTransferred(bytes32 indexed modelId, address indexed previousOwner, address indexed newOwner);
    event ProviderProfileUpdated(address indexed provider, Cid profile);

    /// @notice A model with this id is already registered (ids are never reused, even after retirement).
    error ModelRegistryModelExists(bytes32 modelId);
    /// @notice No model has this id.
    error ModelRegistryUnknownModel(bytes32 modelId);
    /// @notice `caller` is not the model's `owner`.
    error ModelRegistryNotOwner(bytes32 modelId, address caller, address owner);
    /// @notice The model is retired: it can no longer be changed.
    error ModelRegistryModelRetired(bytes32 modelId);
    /// @notice The zero address was given as payee or new owner.
    error ModelRegistryZeroAddress();
    /// @notice A price of zero per call.
    error ModelRegistryZeroPrice();
    /// @notice A CID with an all-zero digest.
    error ModelRegistryZeroDigest();
    /// @notice The model already has this paused state (`paused`), so nothing would change.
    error ModelRegistryPausedUnchanged(bytes32 modelId, bool paused);

    /// @notice Registers a model owned by the caller; emits `ModelRegistered` and `ArtifactPublished` (version 1).
    function registerModel(
        bytes32 salt,
        address payee,
        uint96 price,
        Cid calldata metadata,
        Cid calldata artifact,
        string calldata endpoint
    ) external returns (bytes32 modelId);

    /// @notice Appends a new artifact version and makes it current; returns its version number.
    function publishArtifact(bytes32 modelId, Cid calldata artifact) external returns (uint32 version);

    function setMetadata(bytes32 modelId, Cid calldata metadata) external;

    function setPrice(bytes32 modelId, uint96 price) external;

    /// @notice Sets the model's per-token prices (all zero makes it flat again); owner only, not once retired.
    /// Emits `TokenPricesChanged`. The per-call `price` stays, and is charged on top (see `setPrice`).
    function setTokenPrices(bytes32 modelId, TokenPrices calldata prices) external;

    function setEndpoint(bytes32 modelId, string calldata endpoint) external;

    function setPayee(bytes32 modelId, address payee) external;

    /// @notice Pauses (stops sales, new licenses) or unpauses a model.
    function setPaused(bytes32 modelId, bool paused) external;

    /// @notice Retires a model for good.
    function retire(bytes32 modelId) external;

    /// @notice Hands the model to `newOwner` (the payee is unchanged).
    function transferModel(bytes32 modelId, address newOwner) external;

    /// @notice Sets the caller's provider profile (a CID of a JSON document).
    function setProviderProfile(Cid calldata profile) external;

    /// @notice The token all prices are in (the escrow's token).
    function paymentToken() external view returns (IERC20);

    /// @notice `keccak256(abi.encode(owner, salt))`.
    function modelIdOf(address owner, bytes32 salt) external pure returns (bytes32);

    /// @notice The model (all zero, status None, if unknown).
    function getModel(bytes32 modelId) external view returns (Model memory);

    /// @notice Whether the model exists and is neither paused nor retired.
    function isActive(bytes32 modelId) external view returns (bool);

    /// @notice The price per call; reverts for an unknown model.
    function priceOf(bytes32 modelId) external view returns (uint96);

    /// @notice The model's per-token prices (all zero for a flat or unknown model, as `getModel`).
    function tokenPricesOf(bytes32 modelId) external view returns (TokenPrices memory);

    function providerProfile(address provider) external view returns (Cid memory);
}
