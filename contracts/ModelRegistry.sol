// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";

/**
 * @title ModelRegistry
 * @notice Catalog of models sold per inference; see {IModelRegistry}.
 * @dev A model takes four storage slots (see `Model`), plus one for per-token prices if it has any (`TokenPrices`,
 * apart so that flat models pay nothing for them); the endpoint URL and artifact history live in events only.
 * Only a model's owner may change it, and a retired model cannot be changed at all.
 */
contract ModelRegistry is IModelRegistry {
    IERC20 private immutable _paymentToken;

    mapping(bytes32 modelId => Model) private _models;
    mapping(bytes32 modelId => TokenPrices) private _tokenPrices;
    mapping(address provider => Cid) private _profiles;

    /// @param paymentToken_ The token all prices are quoted and paid in (the PaymentChannels escrow's token).
    constructor(IERC20 paymentToken_) {
        _paymentToken = paymentToken_;
    }

    /// @inheritdoc IModelRegistry
    function registerModel(
        bytes32 salt,
        address payee,
        uint96 price,
        Cid calldata metadata,
        Cid calldata artifact,
        string calldata endpoint
    ) external returns (bytes32 modelId) {
        if (payee == address(0)) revert ModelRegistryZeroAddress();
        if (price == 0) revert ModelRegistryZeroPrice();
        _requireDigest(metadata);
        _requireDigest(artifact);
        modelId = _modelId(msg.sender, salt);
        if (_models[modelId].status != Status.None) revert ModelRegistryModelExists(modelId);
        _models[modelId] = Model({
            owner: msg.sender,
            price: price,
            payee: payee,
            metadataCodec: metadata.codec,
            artifactCodec: artifact.codec,
            artifactVersion: 1,
            status: Status.Active,
            metadataDigest: metadata.digest,
            artifactDigest: artifact.digest
        });
        emit ModelRegistered(modelId, msg.sender, payee, price, metadata, endpoint);
        emit ArtifactPublished(modelId, 1, artifact);
    }

    /// @inheritdoc IModelRegistry
    function publishArtifact(bytes32 modelId, Cid calldata artifact) external returns (uint32 version) {
        Model storage model = _owned(modelId);
        _requireDigest(artifact);
        version = model.artifactVersion + 1;
        model.artifactCodec = artifact.codec;
        model.artifactVersion = version;
        model.artifactDigest = artifact.digest;
        emit ArtifactPublished(modelId, version, artifact);
    }

    /// @inheritdoc IModelRegistry
    function setMetadata(bytes32 modelId, Cid calldata metadata) external {
        Model storage model = _owned(modelId);
        _requireDigest(metadata);
        model.metadataCodec = metadata.codec;
        model.metadataDigest = metadata.digest;
        emit MetadataUpdated(modelId, metadata);
    }

    /// @inheritdoc IModelRegistry
    function setPrice(bytes32 modelId, uint96 price) external {
        Model storage model = _owned(modelId);
        if (price == 0) revert ModelRegistryZeroPrice();
        uint96 oldPrice = model.price;
        model.price = price;
        emit PriceChanged(modelId, oldPrice, price);
    }

    /// @inheritdoc IModelRegistry
    function setTokenPrices(bytes32 modelId, TokenPrices calldata prices) external {
        _owned(modelId);
        _tokenPrices[modelId] = prices;
        emit TokenPricesChanged(modelId, prices.perInputToken, prices.perOutputToken, prices.maxOutputTokens);
    }

    /// @inheritdoc IModelRegistry
    function setEndpoint(bytes32 modelId, string calldata endpoint) external {
        _owned(modelId);
        emit EndpointChanged(modelId, endpoint);
    }

    /// @inheritdoc IModelRegistry
    function setPayee(bytes32 modelId, address payee) external {
        Model storage model = _owned(modelId);
        if (payee == address(0)) revert ModelRegistryZeroAddress();
        address oldPayee = model.payee;
        model.payee = payee;
        emit PayeeChanged(modelId, oldPayee, payee);
    }

    /// @inheritdoc IModelRegistry
    function setPaused(bytes32 modelId, bool paused) external {
        Model storage model = _owned(modelId);
        if ((model.status == Status.Paused) == paused) revert ModelRegistryPausedUnchanged(modelId, paused);
        if (paused) {
            model.status = Status.Paused;
            emit ModelPaused(modelId);
        } else {
            model.status = Status.Active;
            emit ModelUnpaused(modelId);
        }
    }

    /// @inheritdoc IModelRegistry
    function retire(bytes32 modelId) external {
        Model storage model = _owned(modelId);
        model.status = Status.Retired;
        emit ModelRetired(modelId);
    }

    /// @inheritdoc IModelRegistry
    function transferModel(bytes32 modelId, address newOwner) external {
        Model storage model = _owned(modelId);
        if (newOwner == address(0)) revert ModelRegistryZeroAddress();
        model.owner = newOwner;
        emit ModelTransferred(modelId, msg.sender, newOwner);
    }

    /// @inheritdoc IModelRegistry
    /// @dev A zero digest clears the profile.
    function setProviderProfile(Cid calldata profile) external {
        _profiles[msg.sender] = profile;
        emit ProviderProfileUpdated(msg.sender, profile);
    }

    /// @inheritdoc IModelRegistry
    function paymentToken() external view returns (IERC20) {
        return _paymentToken;
    }

    /// @inheritdoc IModelRegistry
    function modelIdOf(address owner, bytes32 salt) external pure returns (bytes32) {
        return _modelId(owner, salt);
    }

    /// @inheritdoc IModelRegistry
    function getModel(bytes32 modelId) external view returns (Model memory) {
        return _models[modelId];
    }

    /// @inheritdoc IModelRegistry
    function isActive(bytes32 modelId) external view returns (bool) {
        return _models[modelId].status == Status.Active;
    }

    /// @inheritdoc IModelRegistry
    function priceOf(bytes32 modelId) external view returns (uint96) {
        Model storage model = _models[modelId];
        if (model.status == Status.None) revert ModelRegistryUnknownModel(modelId);
        return model.price;
    }

    /// @inheritdoc IModelRegistry
    function tokenPricesOf(bytes32 modelId) external view returns (TokenPrices memory) {
        return _tokenPrices[modelId];
    }

    /// @inheritdoc IModelRegistry
    function providerProfile(address provider) external view returns (Cid memory) {
        return _profiles[provider];
    }

    /// @dev The model, after checking it exists, the caller owns it and it is not retired.
    function _owned(bytes32 modelId) private view returns (Model storage model) {
        model = _models[modelId];
        Status status = model.status;
        if (status == Status.None) revert ModelRegistryUnknownModel(modelId);
        if (model.owner != msg.sender) revert ModelRegistryNotOwner(modelId, msg.sender, model.owner);
        if (status == Status.Retired) revert ModelRegistryModelRetired(modelId);
    }

    function _requireDigest(Cid calldata cid) private pure {
        if (cid.digest == bytes32(0)) revert ModelRegistryZeroDigest();
    }

    function _modelId(address owner, bytes32 salt) private pure returns (bytes32) {
        return keccak256(abi.encode(owner, salt));
    }
}
