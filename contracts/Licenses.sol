// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC2981} from "@openzeppelin/contracts/interfaces/IERC2981.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721Enumerable} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721Enumerable.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {ILicenses} from "./interfaces/ILicenses.sol";
import {IModelRegistry} from "./interfaces/IModelRegistry.sol";

/**
 * @title Licenses
 * @notice ERC-721 "Model License" (MLIC) with ERC-2981 royalties; see {ILicenses}.
 * @dev Enumerable so that `validLicenseOf` can walk a holder's licenses (a view; state-changing paths never loop).
 * The royalty receiver is read from the registry at query time, so it follows the model's payee.
 */
contract Licenses is ILicenses, ERC721Enumerable, IERC2981, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    uint16 private constant _BPS_DENOMINATOR = 10_000;

    /// @dev What is stored per license: one slot; the rest is read from the offer.
    struct LicenseRecord {
        uint64 offerId;
        uint64 expiresAt;
    }

    IModelRegistry private immutable _registry;
    IERC20 private immutable _token;

    uint256 private _offerCount;
    uint256 private _licenseCount;
    mapping(uint256 offerId => Offer) private _offers;
    mapping(uint256 licenseId => LicenseRecord) private _licenses;

    /// @param registry_ The model registry (owners, payees, status).
    /// @param token_ The payment token; must be the registry's.
    constructor(IModelRegistry registry_, IERC20 token_) ERC721("Model License", "MLIC") {
        address registryToken = address(registry_.paymentToken());
        if (address(token_) != registryToken) revert LicensesTokenMismatch(address(token_), registryToken);
        _registry = registry_;
        _token = token_;
    }

    /// @inheritdoc ILicenses
    function createOffer(
        bytes32 modelId,
        bytes32 tier,
        uint96 price,
        uint64 duration,
        uint32 maxSupply,
        bool transferable,
        uint16 royaltyBps
    ) external returns (uint256 offerId) {
        IModelRegistry.Model memory model = _registry.getModel(modelId);
        if (model.status == IModelRegistry.Status.None || model.status == IModelRegistry.Status.Retired) {
            revert LicensesModelNotActive(modelId, model.status);
        }
        if (model.owner != msg.sender) revert LicensesNotModelOwner(modelId, msg.sender, model.owner);
        if (royaltyBps > _BPS_DENOMINATOR) revert LicensesRoyaltyTooHigh(royaltyBps);
        offerId = ++_offerCount;
        _offers[offerId] = Offer({
            modelId: modelId,
            tier: tier,
            price: price,
            duration: duration,
            maxSupply: maxSupply,
            sold: 0,
            transferable: transferable,
            active: true,
            royaltyBps: royaltyBps
        });
        emit OfferCreated(offerId, modelId, tier, price, duration, maxSupply, transferable, royaltyBps);
    }

    /// @inheritdoc ILicenses
    function setOfferActive(uint256 offerId, bool active) external {
        Offer storage offer = _ownedOffer(offerId);
        if (offer.active == active) revert LicensesActiveUnchanged(offerId, active);
        offer.active = active;
        emit OfferUpdated(offerId, offer.price, active);
    }

    /// @inheritdoc ILicenses
    function setOfferPrice(uint256 offerId, uint96 price) external {
        Offer storage offer = _ownedOffer(offerId);
        offer.price = price;
        emit OfferUpdated(offerId, price, offer.active);
    }

    /// @inheritdoc ILicenses
    function buy(
        uint256 offerId,
        address recipient,
        uint96 maxPrice
    ) external nonReentrant returns (uint256 licenseId) {
        Offer storage offer = _offers[offerId];
        bytes32 modelId = offer.modelId;
        if (modelId == bytes32(0)) revert LicensesUnknownOffer(offerId);
        if (!offer.active) revert LicensesOfferInactive(offerId);
        uint96 price = offer.price;
        if (price > maxPrice) revert LicensesPriceAboveMax(offerId, price, maxPrice);
        uint32 sold = offer.sold;
        if (offer.maxSupply != 0 && sold >= offer.maxSupply) revert LicensesSoldOut(offerId, offer.maxSupply);
        IModelRegistry.Model memory model = _registry.getModel(modelId);
        if (model.status != IModelRegistry.Status.Active) revert LicensesModelNotActive(modelId, model.status);

        offer.sold = sold + 1;
        uint64 expiresAt = offer.duration == 0 ? 0 : (block.timestamp + offer.duration).toUint64();
        licenseId = ++_licenseCount;
        _licenses[licenseId] = LicenseRecord({offerId: offerId.toUint64(), expiresAt: expiresAt});
        _mint(recipient, licenseId);
        emit LicensePurchased(licenseId, offerId, modelId, msg.sender, recipient, price, expiresAt);
        if (price != 0) _token.safeTransferFrom(msg.sender, model.payee, price);
    }

    /// @inheritdoc ILicenses
    function burn(uint256 licenseId) external {
        _update(address(0), licenseId, msg.sender);
    }

    /// @inheritdoc ILicenses
    function offers(uint256 offerId) external view returns (Offer memory) {
        return _offers[offerId];
    }

    /// @inheritdoc ILicenses
    function offerCount() external view returns (uint256) {
        return _offerCount;
    }

    /// @inheritdoc ILicenses
    function licenseOf(uint256 licenseId) external view returns (License memory) {
        _requireOwned(licenseId);
        LicenseRecord memory record = _licenses[licenseId];
        Offer storage offer = _offers[record.offerId];
        return
            License({
                offerId: record.offerId,
                modelId: offer.modelId,
                expiresAt: record.expiresAt,
                transferable: offer.transferable
            });
    }

    /// @inheritdoc ILicenses
    function isValid(uint256 licenseId) external view returns (bool) {
        if (_ownerOf(licenseId) == address(0)) return false;
        LicenseRecord memory record = _licenses[licenseId];
        return _unexpired(record) && _notRetired(_offers[record.offerId].modelId);
    }

    /// @inheritdoc ILicenses
    function validLicenseOf(address holder, bytes32 modelId) external view returns (uint256 licenseId) {
        if (!_notRetired(modelId)) return 0;
        uint256 held = balanceOf(holder);
        for (uint256 i = 0; i < held; ++i) {
            uint256 candidate = tokenOfOwnerByIndex(holder, i);
            LicenseRecord memory record = _licenses[candidate];
            if (_offers[record.offerId].modelId == modelId && _unexpired(record)) return candidate;
        }
        return 0;
    }

    /// @inheritdoc ILicenses
    function registry() external view returns (IModelRegistry) {
        return _registry;
    }

    /// @inheritdoc ILicenses
    function paymentToken() external view returns (address) {
        return address(_token);
    }

    /// @inheritdoc IERC2981
    /// @dev The receiver is the model's current payee, the rate the offer's `royaltyBps`.
    function royaltyInfo(
        uint256 licenseId,
        uint256 salePrice
    ) external view returns (address receiver, uint256 royaltyAmount) {
        _requireOwned(licenseId);
        Offer storage offer = _offers[_licenses[licenseId].offerId];
        receiver = _registry.getModel(offer.modelId).payee;
        royaltyAmount = (salePrice * offer.royaltyBps) / _BPS_DENOMINATOR;
    }

    /// @inheritdoc IERC165
    function supportsInterface(bytes4 interfaceId) public view override(ERC721Enumerable, IERC165) returns (bool) {
        return interfaceId == type(IERC2981).interfaceId || super.supportsInterface(interfaceId);
    }

    /// @dev Refuses holder-to-holder moves of non-transferable licenses; mints and burns always pass.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address) {
        address from = _ownerOf(tokenId);
        if (from != address(0) && to != address(0) && !_offers[_licenses[tokenId].offerId].transferable) {
            revert LicensesNonTransferable(tokenId);
        }
        return super._update(to, tokenId, auth);
    }

    /// @dev The offer, after checking it exists and the caller owns its model in the registry.
    function _ownedOffer(uint256 offerId) private view returns (Offer storage offer) {
        offer = _offers[offerId];
        bytes32 modelId = offer.modelId;
        if (modelId == bytes32(0)) revert LicensesUnknownOffer(offerId);
        IModelRegistry.Model memory model = _registry.getModel(modelId);
        if (model.owner != msg.sender) revert LicensesNotModelOwner(modelId, msg.sender, model.owner);
    }

    function _unexpired(LicenseRecord memory record) private view returns (bool) {
        return record.expiresAt == 0 || block.timestamp < record.expiresAt;
    }

    function _notRetired(bytes32 modelId) private view returns (bool) {
        return _registry.getModel(modelId).status != IModelRegistry.Status.Retired;
    }
}
